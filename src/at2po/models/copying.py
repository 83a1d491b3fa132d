"""Copy accuracy of a policy: does it reproduce the names an episode needs, token for token?

Two spans of a correct expert episode are copies of text the model has already seen:

- ``query``: the first search query, the question's entity followed by a relation word
  (``<search>Tolvik Maren birthplace</search>``): a copy from the question;
- ``answer``: the final answer, a name or value read in a retrieved passage: a copy from an
  observation.

Under teacher forcing, a span is *copied* when the argmax of the model's next-token distribution
equals every token of the span (the same as greedy decoding of that span given the same
context). Copy accuracy is the fraction of episodes whose span is copied; it measures the
mechanism on its own, apart from the decisions of the episode.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from at2po.models.sft_data import SFTExample, collate, render_episode
from at2po.rollout.codec import Codec
from at2po.tasks.search_env import EnvState


@dataclass(frozen=True)
class CopySpans:
    """An episode's row and the token ranges ``[start, end)`` of its two copied spans (None when
    the episode has no search, or no answer)."""

    row: SFTExample
    query: tuple[int, int] | None
    answer: tuple[int, int] | None


def copy_spans(codec: Codec, state: EnvState) -> CopySpans:
    """The row of ``state`` (:func:`render_episode`) and where its query and answer lie in it."""
    row = render_episode(codec, state)
    prompt_length = len(codec.encode_prompt(state.prompt_messages()))
    offset = prompt_length
    query = answer = None
    for turn in state.turns:
        action = turn.action
        span = _content_span(codec, turn.text, action.kind, action.content)
        if span is not None:
            located = (offset + span[0], offset + span[1])
            if action.kind == "search" and query is None:
                query = located
            elif action.kind == "answer":
                answer = located
        offset += len(codec.tokenizer.encode(turn.text, add_special_tokens=False))
        if turn.observation:
            offset += len(codec.encode_observation(turn.observation))
    return CopySpans(row, query, answer)


def _content_span(codec: Codec, text: str, kind: str, content: str) -> tuple[int, int] | None:
    """Token range of ``content`` inside the turn ``text`` (the text between the action's tags).

    The tags are tokens of their own, so the turn's ids are the ids of the text up to the open
    tag, then of the content, then of the rest; None if that does not hold (another tokenizer).
    """
    if kind not in ("search", "answer") or not content:
        return None
    open_tag = f"<{kind}>"
    start = text.rfind(open_tag + content)
    if start < 0:
        return None
    encode = codec.tokenizer.encode
    head = encode(text[: start + len(open_tag)], add_special_tokens=False)
    body = encode(content, add_special_tokens=False)
    tail = encode(text[start + len(open_tag) + len(content) :], add_special_tokens=False)
    if head + body + tail != encode(text, add_special_tokens=False):
        return None
    return len(head), len(head) + len(body)


@torch.no_grad()
def copy_accuracy(
    model: torch.nn.Module,
    codec: Codec,
    states: Sequence[EnvState],
    batch_size: int = 16,
) -> dict[str, float]:
    """``{"query": …, "answer": …, "n_query": …, "n_answer": …}``: the fraction of episodes
    whose span is copied exactly under teacher forcing (module docstring), and how many
    episodes had each span."""
    spans = [copy_spans(codec, state) for state in states]
    device = next(model.parameters()).device
    pad_id = codec.tokenizer.pad_token_id
    hits = {"query": 0, "answer": 0}
    counts = {"query": 0, "answer": 0}
    for start in range(0, len(spans), batch_size):
        chunk = spans[start : start + batch_size]
        batch = collate([s.row for s in chunk], pad_id).to(device)
        logits_BTV = model(
            input_ids=batch.input_ids_BT, attention_mask=batch.attention_mask_BT
        ).logits
        predicted_BT = logits_BTV.argmax(dim=-1)
        for b, item in enumerate(chunk):
            for name in ("query", "answer"):
                span = getattr(item, name)
                if span is None:
                    continue
                first, end = span
                targets_T = batch.input_ids_BT[b, first:end]
                guesses_T = predicted_BT[b, first - 1 : end - 1]
                counts[name] += 1
                hits[name] += bool((targets_T == guesses_T).all())
    return {
        "query": hits["query"] / max(1, counts["query"]),
        "answer": hits["answer"] / max(1, counts["answer"]),
        "n_query": float(counts["query"]),
        "n_answer": float(counts["answer"]),
    }
