"""Where at2po keeps what it builds or converts: ``$AT2PO_CACHE``, else ``~/.cache/at2po``.

Models live under ``<cache>/models/<name>/``, one Hugging Face directory each.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

CACHE_ENV = "AT2PO_CACHE"


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """The cache directory: ``cache_dir`` if given, else ``$AT2PO_CACHE``, else
    ``~/.cache/at2po``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    from_env = os.environ.get(CACHE_ENV)
    if from_env:
        return Path(from_env).expanduser()
    return Path.home() / ".cache" / "at2po"


def model_dir(name: str, cache_dir: str | Path | None = None) -> Path:
    """Directory of the cached model ``name`` (it may not exist yet)."""
    return cache_root(cache_dir) / "models" / name


@contextmanager
def staged_dir(target: Path) -> Iterator[Path]:
    """A fresh directory next to ``target`` to build into; it replaces ``target`` when the block
    ends without error and is deleted when it raises, so ``target`` is never half-written.

    An existing ``target`` is renamed aside first and deleted after the swap.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(prefix=f".{target.name}-building-", dir=target.parent))
    try:
        yield building
        if target.exists():
            old = target.with_name(f".{target.name}-old-{time.time_ns()}")
            target.rename(old)
            building.rename(target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            building.rename(target)
    finally:
        shutil.rmtree(building, ignore_errors=True)
