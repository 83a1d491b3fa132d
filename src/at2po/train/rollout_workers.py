"""Rollout worker processes: a step's prompts rolled out on every CPU core at once.

    with RolloutWorkers.start(model, tokenizer, cfg, count=2) as workers:
        out = workers.rollout(examples, rollout_cfg)   # same output type as rollouts.rollout

Each worker is a process (spawn context) with one torch thread, its own generation engine
(:func:`at2po.train.policy.build_engine`) and its own task environment, built from ``cfg.task``
as the trainer builds its own (:func:`at2po.train.task.build_task`). :meth:`RolloutWorkers.rollout`
cuts the examples into contiguous chunks, one per worker, each with a seed derived from the
rollout's seed and the chunk index, and merges the outputs in the original order
(:mod:`at2po.train.rollout_chunks`).

**Weights.** The training model's parameters and buffers are moved to shared memory
(``model.share_memory()``) before the workers start, and each worker's model is built over those
same storages. The optimizer's AdamW step and any ``load_state_dict`` write into the parameters in
place, so every rollout samples the weights of the latest update with no copy at all: sending a
state dict every step would cost a serialisation of the whole model per worker per step, and keep
one more copy of it per worker. The price is that the workers must not run while the trainer
updates; they do not (a step's phases run one after another), and a worker's prefix cache is
emptied before every rollout because its engine cannot see the trainer's in-place writes.

**Lifecycle.** Workers are started once, reused for every rollout, and stopped by
:meth:`RolloutWorkers.close` (also on leaving the ``with`` block, so on exceptions and Ctrl-C;
workers ignore SIGINT and leave it to the trainer). A worker also exits by itself when the trainer
process disappears (its end of the pipe closes). A worker that dies, or fails, stops the rollout
with a :class:`RolloutWorkerError` that names it and says what to do, never a hang.

Only CPU models are served: on CUDA one process already uses the whole device, so
:func:`worker_count` resolves ``train.rollout_workers: auto`` to 1 there.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Sequence
from dataclasses import replace
from multiprocessing.connection import Connection, wait
from typing import Any, NoReturn

import torch
import torch.multiprocessing as mp
from tqdm import tqdm

from at2po.rollout.codec import Codec
from at2po.rollout.config import RolloutConfig
from at2po.rollout.rollouts import RolloutOutput, rollout
from at2po.train.config import ConfigError, TrainConfig
from at2po.train.policy import build_engine, device_and_dtype
from at2po.train.rollout_chunks import chunk_seed, merge_outputs, split_chunks
from at2po.train.task import build_task

_STOP_SECONDS = 5.0
"""How long :meth:`RolloutWorkers.close` waits for an idle worker to exit before terminating it."""


class RolloutWorkerError(RuntimeError):
    """A rollout worker died or failed; the message names it and says what to do."""


def worker_count(cfg: TrainConfig) -> int:
    """``train.rollout_workers`` resolved: ``auto`` is the CPU cores this process may use (1 on
    CUDA); more than one on CUDA is a ConfigError."""
    wanted = cfg.train.rollout_workers
    on_cuda = device_and_dtype(cfg.model)[0].type == "cuda"
    if wanted == "auto":
        return 1 if on_cuda else len(os.sched_getaffinity(0))
    if on_cuda and wanted > 1:
        raise ConfigError(
            f"train.rollout_workers={wanted} needs the model on the CPU; a CUDA model rolls out "
            "in the trainer's process (set train.rollout_workers=1 or auto)"
        )
    return wanted


class RolloutWorkers:
    """Started worker processes (module docstring); build with :meth:`start`."""

    def __init__(self, processes: list[Any], connections: list[Connection]) -> None:
        self._processes = processes
        self._connections = connections
        self._busy: set[int] = set()

    @classmethod
    def start(
        cls, model: torch.nn.Module, tokenizer: Any, cfg: TrainConfig, count: int
    ) -> RolloutWorkers:
        """``count`` workers sampling ``model`` (moved to shared memory), ready for rollouts."""
        model.share_memory()
        context = mp.get_context("spawn")
        processes, connections = [], []
        workers = cls(processes, connections)
        try:
            for index in range(count):
                ours, theirs = context.Pipe()
                process = context.Process(
                    target=_serve,
                    args=(index, theirs, model, tokenizer, cfg),
                    name=f"at2po-rollout-worker-{index}",
                    daemon=True,
                )
                process.start()
                theirs.close()
                processes.append(process)
                connections.append(ours)
            workers._busy = set(range(count))
            for index in range(count):
                workers._receive(index, "starting")
        except BaseException:
            workers.close()
            raise
        return workers

    def __len__(self) -> int:
        return len(self._processes)

    @property
    def pids(self) -> list[int]:
        return [process.pid for process in self._processes]

    def __enter__(self) -> RolloutWorkers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def rollout(self, examples: Sequence[Any], cfg: RolloutConfig) -> RolloutOutput:
        """:func:`at2po.rollout.rollouts.rollout` of ``examples``, chunk ``i`` on worker ``i``
        seeded :func:`chunk_seed` ``(cfg.seed, i)``, merged in order."""
        if not examples:
            raise ValueError("rollout() needs at least one example")
        chunks = split_chunks(examples, len(self))
        for index, chunk in enumerate(chunks):
            job = replace(cfg, seed=chunk_seed(cfg.seed, index))
            self._send(index, ("rollout", chunk, job))
        return merge_outputs([self._receive(index, "rolling out") for index in range(len(chunks))])

    def close(self) -> None:
        """Stop every worker: idle ones are asked to exit, busy ones (a rollout interrupted by an
        error or Ctrl-C) are terminated; whatever is still alive after that is killed."""
        for index, connection in enumerate(self._connections):
            if index not in self._busy:
                with contextlib.suppress(OSError):
                    connection.send(("stop",))
        deadline = time.monotonic() + _STOP_SECONDS
        for index, process in enumerate(self._processes):
            if index in self._busy:
                process.terminate()
            process.join(max(0.0, deadline - time.monotonic()))
        for process in self._processes:
            if process.is_alive():
                process.kill()
                process.join()
        for connection in self._connections:
            connection.close()
        self._processes.clear()
        self._connections.clear()
        self._busy.clear()

    def _send(self, index: int, message: tuple) -> None:
        try:
            self._connections[index].send(message)
        except OSError:
            self._processes[index].join(1.0)
            raise self._died(index, "receiving work") from None
        self._busy.add(index)

    def _receive(self, index: int, doing: str) -> Any:
        """The answer of worker ``index``; a RolloutWorkerError if it failed or died meanwhile."""
        connection, process = self._connections[index], self._processes[index]
        ready = wait([connection, process.sentinel])
        if connection not in ready:
            process.join()
            raise self._died(index, doing)
        try:
            status, payload = connection.recv()
        except (EOFError, OSError):
            process.join(1.0)
            raise self._died(index, doing) from None
        self._busy.discard(index)
        if status == "failed":
            raise RolloutWorkerError(
                f"rollout worker {index} (pid {process.pid}) failed while {doing}:\n{payload}"
                "The run stops; fix the cause above (or set train.rollout_workers=1 to roll out "
                "in the trainer's process and see it there), then continue with --resume."
            )
        return payload

    def _died(self, index: int, doing: str) -> RolloutWorkerError:
        process = self._processes[index]
        code = process.exitcode
        if code is None:
            how = "lost its connection"
        elif code < 0:
            how = f"was killed by {signal.Signals(-code).name}"
        else:
            how = f"exited with code {code}"
        return RolloutWorkerError(
            f"rollout worker {index} (pid {process.pid}) {how} while {doing}. The run stops. If "
            "the system killed it for lack of memory (see `dmesg`), lower train.rollout_workers "
            "or rollout.engine_batch_size; then continue the run with --resume (it restarts the "
            "workers and repeats the steps after the last checkpoint exactly)."
        )


def _serve(
    index: int, connection: Connection, model: Any, tokenizer: Any, cfg: TrainConfig
) -> None:
    """A worker's life: build the engine and env, say ready, then answer rollouts until told to
    stop or until the trainer's end of the pipe closes; then :func:`_exit`."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(1)
    # tqdm's default lock is a multiprocessing semaphore, which os._exit would leave behind for
    # the trainer's resource tracker to warn about; a worker's bars need only a thread lock.
    tqdm.set_lock(threading.RLock())
    try:
        env = build_task(cfg.task).env
        engine = build_engine(model, tokenizer, cfg.rollout)
        codec = Codec.from_tokenizer(tokenizer)
        connection.send(("ready", index))
    except Exception:
        connection.send(("failed", traceback.format_exc()))
        _exit()
    while True:
        try:
            message = connection.recv()
        except (EOFError, OSError):
            _exit()
        if message[0] == "stop":
            _exit()
        _, examples, rollout_cfg = message
        try:
            engine.prefix_cache.clear()
            answer = ("done", rollout(engine, codec, env, examples, rollout_cfg))
        except Exception:
            answer = ("failed", traceback.format_exc())
        try:
            connection.send(answer)
        except OSError:
            _exit()


def _exit() -> NoReturn:
    """End the worker at once: it holds nothing to save, and the interpreter's own shutdown of
    torch and transformers takes seconds."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
