"""The shipped default policy: its checksums, its install, its name tokens, and that it cannot
answer held-out questions without searching (no facts leak between worlds)."""

from __future__ import annotations

import shutil

import pytest
import torch
from rich.console import Console
from transformers import AutoModelForCausalLM, AutoTokenizer

from at2po.models.bootstrap import BootstrapConfig, bootstrap, check_sets
from at2po.models.leakage import answer_at_once_em
from at2po.models.packaged import (
    CHECKSUMS_FILE,
    install_packaged,
    packaged_model,
    verify_checksums,
)
from at2po.rollout.codec import Codec
from at2po.rollout.hf_engine import HFEngine
from at2po.tasks.worlds.names import INVENTORY_SIZE, name_inventory


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """The default policy as `at2po bootstrap` installs it into an empty cache."""
    cache = tmp_path_factory.mktemp("cache")
    return bootstrap(cache, console=Console(quiet=True))


def test_default_settings_install_the_packaged_model(installed):
    source = packaged_model()
    assert source is not None
    verify_checksums(source)
    for path in source.iterdir():
        if path.name != CHECKSUMS_FILE:
            assert (installed / path.name).read_bytes() == path.read_bytes()


def test_a_damaged_packaged_file_is_refused(tmp_path):
    copy = tmp_path / "tiny"
    shutil.copytree(packaged_model(), copy)
    with (copy / "config.json").open("a") as handle:
        handle.write(" ")
    with pytest.raises(ValueError, match=r"config\.json .*damaged.*--force"):
        install_packaged(copy, tmp_path / "target")
    assert not (tmp_path / "target").exists()


def test_every_inventory_name_is_one_token_wherever_it_stands(installed):
    tokenizer = AutoTokenizer.from_pretrained(installed)
    names = name_inventory()
    assert len(set(names)) == INVENTORY_SIZE
    ids = {tokenizer.convert_tokens_to_ids(name) for name in names}
    assert len(ids) == INVENTORY_SIZE
    for name in names:
        for text in (
            name,
            f"<search>{name} birthplace</search>",
            f'"{name}"',
            f"in {name}.",
            f"{name}'s",
        ):
            pieces = tokenizer.encode(text, add_special_tokens=False)
            assert tokenizer.convert_tokens_to_ids(name) in pieces, (name, text)
            assert tokenizer.decode(pieces) == text


def test_the_policy_cannot_answer_held_out_questions_without_searching(installed):
    """Answering at once (no search) scores at most 2 % on 200 held-out questions."""
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(installed, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(installed)
    env, sets = check_sets(BootstrapConfig())
    engine = HFEngine(model, tokenizer, max_batch_size=64)
    em, answers = answer_at_once_em(engine, Codec.from_tokenizer(tokenizer), env, sets["dev"])
    assert len(sets["dev"]) == 200
    assert em <= 0.02
    assert sum(bool(a) for a in answers) >= 180  # it does answer: a guess, not a refusal
