"""``at2po train / eval / compare``: help, user errors that say what to fix, eval output."""

from __future__ import annotations

import json
import socket

import pytest
from train_helpers import fast_overrides, run_cli

from at2po.train.run_dir import read_metrics


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("command", ["train", "eval", "compare"])
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_cli(command, "--help")
    assert exit_info.value.code == 0
    assert "usage: at2po " + command in capsys.readouterr().out


def test_an_unknown_key_names_the_closest_one(tmp_path):
    with pytest.raises(SystemExit, match=r"did you mean 'optim\.lr'"):
        run_cli("train", "at2po", "optim.lrr=1e-4", "--out", str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_a_missing_model_says_to_bootstrap_or_pass_a_directory(tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        run_cli("train", "at2po", f"model.path={tmp_path / 'nowhere'}", f"out_dir={tmp_path / 'r'}")
    message = str(exit_info.value)
    assert "at2po bootstrap" in message and "model.path=DIR" in message
    assert not (tmp_path / "r").exists()


def test_an_unreachable_retrieval_server_is_reported_before_training(tiny_policy_dir, tmp_path):
    url = f"http://127.0.0.1:{free_port()}/retrieve"
    with pytest.raises(SystemExit) as exit_info:
        run_cli(
            "train",
            "at2po",
            *fast_overrides(tiny_policy_dir, tmp_path / "run"),
            "task.retriever=http",
            f"task.retriever_url={url}",
        )
    message = str(exit_info.value)
    assert url in message and "at2po retriever serve" in message
    assert not (tmp_path / "run").exists()


def test_print_config_shows_the_resolved_values_with_their_help(capsys):
    assert run_cli("train", "grpo", "optim.lr=5e-5", "--print-config") == 0
    text = capsys.readouterr().out
    assert "lr: 5.0e-05" in text
    assert "# Peak learning rate of AdamW." in text


def test_train_then_eval_a_checkpoint_and_refuse_to_overwrite_the_run(
    tiny_policy_dir, tmp_path, capsys
):
    run = tmp_path / "run"
    assert run_cli("train", "at2po", *fast_overrides(tiny_policy_dir, run)) == 0
    logged = read_metrics(run / "metrics.jsonl")[-1]
    capsys.readouterr()
    assert run_cli("eval", "--checkpoint", str(run / "checkpoints" / "step_000002")) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == {k: v for k, v in logged.items() if k.startswith(("eval/", "eval_novel/"))}

    with pytest.raises(SystemExit, match="--resume"):
        run_cli("train", "at2po", *fast_overrides(tiny_policy_dir, run))
    # resuming a finished run continues nothing, keeps its metrics and says where it resumed
    assert run_cli("train", "at2po", *fast_overrides(tiny_policy_dir, run), "--resume") == 0
    assert [r["step"] for r in read_metrics(run / "metrics.jsonl")] == [0, 1, 2]
    checkpoint = run / "checkpoints" / "step_000002"
    assert f"resuming from step 2 (checkpoint {checkpoint})" in capsys.readouterr().err


def test_resume_of_a_directory_without_a_run_refuses(tmp_path):
    """A mistyped ``--out`` with ``--resume`` must not start a new run there."""
    typo = tmp_path / "rn"
    with pytest.raises(SystemExit) as exit_info:
        run_cli("train", "at2po", "--out", str(typo), "--resume")
    message = str(exit_info.value)
    assert f"{typo} holds no run" in message and "drop --resume" in message
    assert "\n" not in message
    assert not typo.exists()


def test_out_naming_a_file_is_refused_and_the_file_kept(tmp_path):
    existing = tmp_path / "notes.txt"
    existing.write_text("keep me")
    with pytest.raises(SystemExit) as exit_info:
        run_cli("train", "at2po", "--out", str(existing))
    message = str(exit_info.value)
    assert f"{existing} is a file" in message and "--out DIR" in message
    assert "\n" not in message
    assert existing.read_text() == "keep me"


def test_out_that_cannot_be_created_is_refused(tmp_path):
    blocker = tmp_path / "notes.txt"
    blocker.write_text("keep me")
    with pytest.raises(SystemExit) as exit_info:
        run_cli("train", "at2po", "--out", str(blocker / "run"))
    message = str(exit_info.value)
    assert f"{blocker / 'run'} cannot be created" in message and f"{blocker} is a file" in message
    assert "--out DIR" in message and "\n" not in message
    assert blocker.read_text() == "keep me"
