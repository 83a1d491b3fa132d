"""Rollout worker processes: their output is the chunks' in-process rollouts, they sample the
training model's current weights, and no worker outlives its run, an error or a kill."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from rich.console import Console
from safetensors.torch import load_file
from train_helpers import MOVING, fast_overrides

from at2po.rollout.codec import Codec
from at2po.rollout.rollouts import RolloutOutput, rollout
from at2po.train import step as step_module
from at2po.train.config import ConfigError, TrainConfig, load_config
from at2po.train.policy import build_engine, load_model, load_tokenizer
from at2po.train.rollout_chunks import chunk_seed, merge_outputs, split_chunks
from at2po.train.rollout_workers import RolloutWorkerError, RolloutWorkers, worker_count
from at2po.train.run_dir import read_metrics
from at2po.train.task import build_task
from at2po.train.trainer import Trainer


def _config(policy: Path, out: Path, *extra: str) -> TrainConfig:
    return load_config("at2po", [*fast_overrides(policy, out), "train.prompts_per_step=3", *extra])


class _InProcess:
    """The trainer-side pieces for rolling out in this process: the reference the workers are
    compared with."""

    def __init__(self, policy: Path, cfg: TrainConfig) -> None:
        self.cfg = cfg
        self.tokenizer = load_tokenizer(policy)
        self.model = load_model(policy, cfg.model)
        self.engine = build_engine(self.model, self.tokenizer, cfg.rollout)
        self.codec = Codec.from_tokenizer(self.tokenizer)
        self.task = build_task(cfg.task)
        self.examples = self.task.split("train")[:3]
        self.rollout_cfg = replace(cfg.rollout.to_rollout_config(), seed=1234)

    def chunks_rolled_out_here(self, n: int) -> RolloutOutput:
        """The rollout the workers promise, computed without them: each chunk rolled out in this
        process with its derived seed, then merged."""
        outputs = []
        for index, chunk in enumerate(split_chunks(self.examples, n)):
            self.engine.prefix_cache.clear()
            seeded = replace(self.rollout_cfg, seed=chunk_seed(self.rollout_cfg.seed, index))
            outputs.append(rollout(self.engine, self.codec, self.task.env, chunk, seeded))
        return merge_outputs(outputs)


@pytest.fixture(scope="module")
def here(tiny_policy_dir, tmp_path_factory) -> _InProcess:
    torch.set_num_threads(1)  # as in the workers, so both compute the same floats
    return _InProcess(tiny_policy_dir, _config(tiny_policy_dir, tmp_path_factory.mktemp("run")))


@pytest.fixture(scope="module")
def workers(here):
    with RolloutWorkers.start(here.model, here.tokenizer, here.cfg, 2) as started:
        yield started


def _trees(out: RolloutOutput) -> list[tuple]:
    return [(g.example, g.tree.to_dict(), g.row_leaves) for g in out.groups]


def _without_perf(metrics: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in metrics.items() if not k.startswith("perf/")}


def _gone(pid: int) -> bool:
    return not Path(f"/proc/{pid}").exists()


def test_two_workers_return_the_chunks_rolled_out_in_process_with_their_seeds(here, workers):
    ours = workers.rollout(here.examples, here.rollout_cfg)
    expected = here.chunks_rolled_out_here(2)
    assert [g.example for g in ours.groups] == here.examples  # original order
    assert _trees(ours) == _trees(expected)
    assert _without_perf(ours.metrics) == _without_perf(expected.metrics)
    assert ours.metrics["rollout/rows"] == 3 * here.cfg.rollout.n_rows


def test_workers_sample_the_weights_of_the_latest_in_place_update(here, workers):
    """An in-place update (as AdamW's) and a load_state_dict (as a restore) of the trainer's model
    reach the workers with nothing sent."""
    before = _trees(workers.rollout(here.examples, here.rollout_cfg))
    saved = {k: v.clone() for k, v in here.model.state_dict().items()}
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in here.model.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator))
    moved = workers.rollout(here.examples, here.rollout_cfg)
    assert _trees(moved) != before
    assert _trees(moved) == _trees(here.chunks_rolled_out_here(2))
    here.model.load_state_dict(saved)
    assert _trees(workers.rollout(here.examples, here.rollout_cfg)) == before


def test_a_killed_worker_is_an_error_naming_it_and_the_others_are_stopped(here):
    started = RolloutWorkers.start(here.model, here.tokenizer, here.cfg, 2)
    pids = started.pids
    os.kill(pids[1], signal.SIGKILL)
    with started, pytest.raises(RolloutWorkerError) as error:
        started.rollout(here.examples, here.rollout_cfg)
    message = str(error.value)
    assert f"rollout worker 1 (pid {pids[1]}) was killed by SIGKILL" in message
    assert "--resume" in message and "train.rollout_workers" in message
    assert all(_gone(pid) for pid in pids)


def _recording_pids(monkeypatch) -> list[int]:
    """The pids of every worker started from now on (recorded while they live)."""
    pids: list[int] = []
    original = RolloutWorkers.start.__func__

    def start(cls, *args, **kwargs):
        started = original(cls, *args, **kwargs)
        pids.extend(started.pids)
        return started

    monkeypatch.setattr(RolloutWorkers, "start", classmethod(start))
    return pids


def test_a_dapo_run_on_two_workers_trains_and_leaves_no_worker(
    tiny_policy_dir, tmp_path, monkeypatch
):
    """Dynamic sampling draws its extra generation batches through the same two workers; their
    start is a progress line when the output is redirected."""
    pids = _recording_pids(monkeypatch)
    overrides = fast_overrides(tiny_policy_dir, tmp_path / "run")
    extra = ["train.rollout_workers=2", "credit.overlong_buffer=20", "train.progress=true"]
    printed = io.StringIO()
    console = Console(file=printed, force_terminal=False, width=200)
    trainer = Trainer(load_config("dapo", [*overrides, *extra]), console=console)
    result = trainer.train()
    assert result.steps == 2 and len(pids) == 2
    assert "workers: 2 rollout workers started in" in printed.getvalue()
    records = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert [r["rollout/generation_batches"] for r in records[1:]] == [3.0, 3.0]  # all -1 rewards
    assert trainer.runner.workers is None and all(_gone(pid) for pid in pids)


def test_ctrl_c_mid_step_stops_the_workers(tiny_policy_dir, tmp_path, monkeypatch):
    """Ctrl-C is a KeyboardInterrupt in the trainer (the workers ignore SIGINT); like any other
    exception it leaves no worker behind."""
    pids = _recording_pids(monkeypatch)
    alive_then: list[bool] = []

    def interrupt(*args, **kwargs):
        alive_then.extend(not _gone(pid) for pid in pids)
        raise KeyboardInterrupt

    monkeypatch.setattr(step_module, "assign_credit", interrupt)
    trainer = Trainer(_config(tiny_policy_dir, tmp_path / "run", "train.rollout_workers=2"))
    with pytest.raises(KeyboardInterrupt):
        trainer.train()
    assert alive_then == [True, True] and all(_gone(pid) for pid in pids)


@pytest.mark.slow
def test_a_run_on_two_workers_resumes_exactly(tiny_policy_dir, tmp_path):
    """Killed after step 2's checkpoint, resumed: steps 3 and 4 and the final weights equal the
    uninterrupted run's (fresh workers, chunk seeds from the restored RNG)."""

    def run(out: Path, resume: bool) -> None:
        overrides = [
            *fast_overrides(tiny_policy_dir, out),
            *MOVING,
            "train.steps=4",
            "train.save_every=1",
            "train.keep_last=4",
            "train.rollout_workers=2",
        ]
        Trainer(load_config("at2po", overrides), resume=resume).train()

    whole, cut = tmp_path / "whole", tmp_path / "cut"
    run(whole, resume=False)
    shutil.copytree(whole, cut)
    for step in (3, 4):
        shutil.rmtree(cut / "checkpoints" / f"step_{step:06d}")
    kept = (whole / "metrics.jsonl").read_text().splitlines(keepends=True)[:3]
    (cut / "metrics.jsonl").write_text("".join(kept))
    run(cut, resume=True)

    def without_timing(run_dir: Path) -> list[dict]:
        return [
            {k: v for k, v in record.items() if k != "time" and not k.startswith("perf/")}
            for record in read_metrics(run_dir / "metrics.jsonl")
        ]

    assert [r["step"] for r in without_timing(cut)] == [0, 1, 2, 3, 4]
    assert without_timing(cut) == without_timing(whole)
    last = Path("checkpoints") / "step_000004" / "model.safetensors"
    ours, theirs = load_file(cut / last), load_file(whole / last)
    assert all(torch.equal(ours[name], theirs[name]) for name in theirs)


def test_auto_is_one_worker_per_usable_core_and_more_than_one_needs_the_cpu(tmp_path):
    cores = len(os.sched_getaffinity(0))
    auto = load_config("at2po", ["model.device=cpu", "train.rollout_workers=auto"])
    assert worker_count(auto) == cores
    with pytest.raises(ConfigError, match=r"train\.rollout_workers"):
        load_config("at2po", ["train.rollout_workers=0"])
    if not torch.cuda.is_available():
        return
    on_gpu = load_config("at2po", ["model.device=cuda", "train.rollout_workers=auto"])
    assert worker_count(on_gpu) == 1
    with pytest.raises(ConfigError, match="needs the model on the CPU"):
        worker_count(load_config("at2po", ["model.device=cuda", "train.rollout_workers=2"]))


_WORKERS_IN_A_SCRIPT = """
import json, sys
from pathlib import Path
from at2po.train.config import load_config
from at2po.train.policy import load_model, load_tokenizer
from at2po.train.rollout_workers import RolloutWorkers
from at2po.train.task import build_task

def main():
    cfg = load_config("at2po", json.loads(sys.argv[1]))
    policy = Path(sys.argv[2])
    model, tokenizer = load_model(policy, cfg.model), load_tokenizer(policy)
    examples = build_task(cfg.task).split("train")[:2]
    with RolloutWorkers.start(model, tokenizer, cfg, 2) as workers:
        workers.rollout(examples, cfg.rollout.to_rollout_config())

if __name__ == "__main__":
    main()
"""


def test_workers_leave_no_semaphore_for_the_resource_tracker(tiny_policy_dir, tmp_path):
    """Workers end with os._exit: a multiprocessing lock of theirs (tqdm's default) would make the
    trainer's process warn about leaked semaphores when it exits."""
    script = tmp_path / "workers.py"
    script.write_text(_WORKERS_IN_A_SCRIPT)
    overrides = [*fast_overrides(tiny_policy_dir, tmp_path / "run"), "train.prompts_per_step=2"]
    done = subprocess.run(
        [sys.executable, str(script), json.dumps(overrides), str(tiny_policy_dir)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "leaked semaphore" not in done.stderr
