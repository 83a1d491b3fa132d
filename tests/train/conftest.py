"""Fixtures of the trainer tests: a tiny random-init policy directory (see ``train_helpers``)."""

from __future__ import annotations

from pathlib import Path

import pytest
from train_helpers import build_tiny_policy


@pytest.fixture(scope="session")
def tiny_policy_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_policy(tmp_path_factory.mktemp("tiny_policy"))
