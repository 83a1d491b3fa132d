"""The cache directory and the all-or-nothing staging of built directories."""

from __future__ import annotations

from pathlib import Path

import pytest

from at2po.models.paths import CACHE_ENV, cache_root, model_dir, staged_dir


def test_cache_root_order(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "from-env"))
    assert cache_root(tmp_path / "given") == tmp_path / "given"
    assert cache_root() == tmp_path / "from-env"
    assert model_dir("m") == tmp_path / "from-env" / "models" / "m"
    monkeypatch.delenv(CACHE_ENV)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_root() == tmp_path / "home" / ".cache" / "at2po"


def test_staged_dir_replaces_target_only_on_success(tmp_path):
    target = tmp_path / "models" / "m"
    with staged_dir(target) as building:
        (building / "weights").write_text("v1")
    assert (target / "weights").read_text() == "v1"

    with pytest.raises(RuntimeError), staged_dir(target) as building:
        (building / "weights").write_text("half")
        raise RuntimeError("crash while building")
    assert (target / "weights").read_text() == "v1"

    with staged_dir(target) as building:
        (building / "weights").write_text("v2")
    assert (target / "weights").read_text() == "v2"
    assert sorted(p.name for p in Path(target.parent).iterdir()) == ["m"]
