"""A small byte-level BPE tokenizer for the search agent, with a ChatML chat template.

Ids ``0..2`` are the special tokens ``<|pad|>``, ``<|im_start|>``, ``<|im_end|>`` (EOS); then the
learned BPE vocabulary; then eight ids for the agent's tags (``<think>``, ``</think>``,
``<search>``, ``</search>``, ``<result>``, ``</result>``, ``<answer>``, ``</answer>``), one token
each. The tags are added tokens but not *special* ones, so ``decode(..., skip_special_tokens=True)``
keeps them: they are part of what the agent writes. Last come the name words of the closed
inventory (:func:`at2po.tasks.worlds.names.name_inventory`), one id each, when given.

Names and numbers are tokenized the same wherever they stand, so that copying one (from the
question or a passage into a query or an answer) is copying the same ids. Byte-level BPE would
otherwise give ``Tolvik`` after a space (`` Tolvik``, one id) and after ``<search>`` (``Tolvik``,
another id). So a space before a capital letter is its own token, and every digit is its own
token. Lower-case words keep their leading space (`` the``, `` born``).

A prompt renders as

    <|im_start|>system\\n{instruction}<|im_end|>\\n<|im_start|>user\\nQuestion: …<|im_end|>\\n
    <|im_start|>assistant\\n                      (with add_generation_prompt=True)
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

PAD = "<|pad|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
SPECIAL_TOKENS: tuple[str, ...] = (PAD, IM_START, IM_END)
TAG_TOKENS: tuple[str, ...] = (
    "<think>", "</think>", "<search>", "</search>",
    "<result>", "</result>", "<answer>", "</answer>",
)  # fmt: skip

CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\n' }}{%- endif -%}"
)
"""ChatML: every message is ``<|im_start|>role\\ncontent<|im_end|>\\n``; the generation prompt
opens an assistant message."""


def train_tokenizer(
    texts: Iterable[str],
    vocab_size: int = 4096,
    model_max_length: int = 2048,
    name_words: Sequence[str] = (),
    tags: Sequence[str] = TAG_TOKENS,
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE of exactly ``vocab_size`` ids on ``texts`` (see the module docstring).

    Every byte has a token (the 256-symbol byte alphabet is always kept), so any text encodes.
    Each of ``name_words`` (the closed name inventory) becomes one token of its own, matched as a
    whole word wherever it stands; they come after the tags and count towards ``vocab_size``.
    ``tags``: the agent format's tags (the search format's by default; the game format has its
    own), one token each.
    """
    minimum = len(SPECIAL_TOKENS) + len(tags) + 256 + len(name_words)
    if vocab_size < minimum:
        raise ValueError(
            f"vocab_size={vocab_size} is too small: the byte alphabet, {len(SPECIAL_TOKENS)} "
            f"special tokens, {len(tags)} tags and {len(name_words)} name words need at "
            f"least {minimum} ids"
        )
    corpus = list(texts)
    if name_words:
        names = re.compile(r"\b(?:" + "|".join(map(re.escape, name_words)) + r")\b")
        corpus = [names.sub(" ", text) for text in corpus]
    bpe_size = vocab_size - len(tags) - len(name_words)
    for _ in range(3):
        bpe = _train_bpe(corpus, bpe_size)
        bpe.add_tokens([AddedToken(tag, special=False, normalized=False) for tag in tags])
        bpe.add_tokens(
            [AddedToken(w, special=False, normalized=False, single_word=True) for w in name_words]
        )
        missing = vocab_size - bpe.get_vocab_size()
        if missing <= 0 or bpe.get_vocab_size(with_added_tokens=False) < bpe_size:
            break
        bpe_size += missing  # a name the BPE learned by itself took no new id: learn more merges
    if bpe.get_vocab_size() != vocab_size:
        raise ValueError(
            f"the texts hold too little to learn {vocab_size} ids (got {bpe.get_vocab_size()}); "
            "train on more text or ask for a smaller vocab_size"
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        eos_token=IM_END,
        pad_token=PAD,
        chat_template=CHAT_TEMPLATE,
        model_max_length=model_max_length,
    )


def _train_bpe(corpus: Sequence[str], size: int) -> Tokenizer:
    """A byte-level BPE of ``size`` ids (special tokens included) with the module's
    pre-tokenization: a space before a capital on its own, digits one by one."""
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(" (?=[A-Z])"), behavior="isolated"),
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(corpus, trainer)
    return bpe
