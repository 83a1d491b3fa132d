"""The search agent's tokenizer: exact size, tags as single tokens, lossless text, ChatML."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import AutoTokenizer

from at2po.models.tokenizer import (
    CHAT_TEMPLATE,
    IM_END,
    IM_START,
    PAD,
    TAG_TOKENS,
    train_tokenizer,
)

TEXTS = [
    f"<think>I need the birthplace of Maren Tolvik {i}.</think>\n<search>Maren Tolvik born</search>"
    f' <result>\nDoc 1: "Maren Tolvik" Maren Tolvik was born in Velmora in 19{i:02d}.\n</result>'
    "<answer>Velmora</answer>"
    for i in range(60)
]
VOCAB = 300


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tokenizer")
    train_tokenizer(TEXTS, vocab_size=VOCAB).save_pretrained(directory)
    return AutoTokenizer.from_pretrained(directory)


def test_size_and_special_ids(tokenizer):
    assert len(tokenizer) == VOCAB
    assert tokenizer.convert_tokens_to_ids([PAD, IM_START, IM_END]) == [0, 1, 2]
    assert tokenizer.pad_token == PAD and tokenizer.eos_token == IM_END
    assert tokenizer.convert_tokens_to_ids(list(TAG_TOKENS)) == list(range(VOCAB - 8, VOCAB))


def test_tags_are_single_tokens_and_survive_decoding(tokenizer):
    text = "x <think>a</think>\n<search>b</search> <result>\nc\n</result><answer>d</answer>"
    ids = tokenizer.encode(text, add_special_tokens=False)
    pieces = tokenizer.convert_ids_to_tokens(ids)
    for tag in TAG_TOKENS:
        assert pieces.count(tag) == 1
    assert tokenizer.decode(ids) == text
    assert tokenizer.decode(ids, skip_special_tokens=True) == text


def test_names_and_numbers_have_the_same_ids_wherever_they_stand(tokenizer):
    def ids(text: str) -> list[int]:
        return tokenizer.encode(text, add_special_tokens=False)

    space = ids(" ")
    for name in ("Maren Tolvik", "Velmora", "Zorbinak Quell", "1987"):
        alone = ids(name)
        assert ids(f"born in {name}.")[-len(alone) - 1 : -1] == alone
        assert ids(f"<search>{name}</search>")[1:-1] == alone
        assert ids(f'"{name}"')[1:-1] == alone
        assert ids(f" {name}") == space + alone
    assert tokenizer.convert_ids_to_tokens(ids("1987")) == ["1", "9", "8", "7"]


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.sampled_from([*TAG_TOKENS, IM_END, " ", "\n", "Doc 1:", "Ünïcødé", "→"]),
            st.text(max_size=12),
        ),
        max_size=8,
    )
)
def test_any_text_round_trips(tokenizer, pieces):
    text = "".join(pieces)
    assert tokenizer.decode(tokenizer.encode(text, add_special_tokens=False)) == text


def test_chat_template_renders_chatml(tokenizer):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"}]
    expected = "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi?<|im_end|>\n"
    assert tokenizer.chat_template == CHAT_TEMPLATE
    assert tokenizer.apply_chat_template(messages, tokenize=False) == expected
    with_prompt = tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True
    )
    assert with_prompt == expected + "<|im_start|>assistant\n"
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    ids = ids["input_ids"] if hasattr(ids, "keys") else ids
    assert ids == tokenizer.encode(with_prompt, add_special_tokens=False)
    assert ids.count(tokenizer.convert_tokens_to_ids(IM_START)) == 3


def test_errors_name_the_fix():
    with pytest.raises(ValueError, match="vocab_size=100 is too small"):
        train_tokenizer(TEXTS, vocab_size=100)
    with pytest.raises(ValueError, match="too little to learn 5000 ids"):
        train_tokenizer(TEXTS, vocab_size=5000)
