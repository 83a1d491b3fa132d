"""Fixtures of the trainer tests: a tiny random-init policy directory (see ``train_helpers``)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from train_helpers import build_tiny_policy


@pytest.fixture(scope="session")
def tiny_policy_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_policy(tmp_path_factory.mktemp("tiny_policy"))


@pytest.fixture(autouse=True)
def _keep_torch_threads():
    """Trainers apply ``model.threads`` to the process; give other tests their setting back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
