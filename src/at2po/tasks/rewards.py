"""Rewards for search QA: answer matching (SQuAD-style) and named reward schemes.

normalize(s) = lower-case → drop ASCII punctuation → drop the articles a/an/the → collapse
whitespace (Rajpurkar et al. 2016, the SQuAD evaluation script; also FlashRAG's and the AT²PO
authors' ``deep_research_em``).

    EM(p, G) = max_{g ∈ G} [normalize(p) = normalize(g)]
    F1(p, G) = max_{g ∈ G} 2·P·R / (P + R),  P = |p ∩ g| / |p|,  R = |p ∩ g| / |g|

over normalized tokens, counting multiplicities; when either side normalizes to ``yes``, ``no``
or ``noanswer`` the pair scores 1 only if both are equal (HotpotQA's evaluation rule).

Reward schemes (``RewardConfig.scheme``), with ``ok`` = the response passes
:func:`at2po.tasks.agent_format.check_response`:

    at2po                    r = EM if ok else −1            (the published AT²PO setting)
    em                       r = EM
    f1                       r = F1
    em_with_format_penalty   r = EM − format_penalty · [not ok]

The authors' exact rule is "F1 > 0 ? EM : 0" after the format check, which equals EM; their +0.1
bonus for using both a python and a search tool has no counterpart here (there is one tool).
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from at2po.tasks.agent_format import FormatCheck, check_response, read_response

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)
_EXACT_ONLY = frozenset({"yes", "no", "noanswer"})


def normalize_answer(text: str) -> str:
    """Lower-case, remove ASCII punctuation, remove the articles a/an/the, collapse whitespace."""
    return " ".join(_ARTICLES.sub(" ", text.lower().translate(_PUNCTUATION)).split())


def exact_match(prediction: str, golden_answers: Sequence[str]) -> float:
    """1.0 if the normalized prediction equals any normalized golden answer, else 0.0."""
    predicted = normalize_answer(prediction)
    return float(any(predicted == normalize_answer(gold) for gold in golden_answers))


def token_f1(prediction: str, golden_answers: Sequence[str]) -> float:
    """Best token-level F1 of the prediction against the golden answers (see module docstring).

    0.0 when ``golden_answers`` is empty.
    """
    if not golden_answers:
        return 0.0
    predicted = normalize_answer(prediction)
    return max(_pair_f1(predicted, normalize_answer(gold)) for gold in golden_answers)


def _pair_f1(predicted: str, gold: str) -> float:
    if (predicted in _EXACT_ONLY or gold in _EXACT_ONLY) and predicted != gold:
        return 0.0
    common = Counter(predicted.split()) & Counter(gold.split())
    overlap = sum(common.values())
    if overlap == 0:
        return 0.0
    precision = overlap / len(predicted.split())
    recall = overlap / len(gold.split())
    return 2 * precision * recall / (precision + recall)


def format_valid(response_text: str, *, require_think: bool = False) -> bool:
    """Whether a response (without the prompt) follows the agent format.

    The grammar is :func:`at2po.tasks.agent_format.check_response`: every ``<search>`` answered
    by a ``<result>``, exactly one non-empty ``<answer>`` at the end, ``<think>`` blocks closed.
    ``require_think=True`` also asks for at least one ``<think>…</think>`` block, as the authors
    did; by default thinking is optional, so small models without a thinking habit can score.
    """
    return _format_ok(check_response(response_text), require_think)


def _format_ok(check: FormatCheck, require_think: bool) -> bool:
    return check.problem is None and (check.think_blocks > 0 or not require_think)


@dataclass(frozen=True)
class RewardResult:
    """A scalar reward and named sub-scores for logging (``reward/<name>`` metrics)."""

    reward: float
    scores: dict[str, float]


_SCHEMES: dict[str, Callable[[float, float, bool, float], float]] = {
    "at2po": lambda em, f1, ok, penalty: em if ok else -1.0,
    "em": lambda em, f1, ok, penalty: em,
    "f1": lambda em, f1, ok, penalty: f1,
    "em_with_format_penalty": lambda em, f1, ok, penalty: em - (0.0 if ok else penalty),
}
REWARD_SCHEMES: tuple[str, ...] = tuple(_SCHEMES)


@dataclass(frozen=True)
class RewardConfig:
    """How a finished response is scored.

    scheme: one of ``REWARD_SCHEMES`` (``at2po``: EM, or −1 when the format is invalid).
    require_think: the format also needs at least one ``<think>…</think>`` block.
    format_penalty: subtracted from EM by ``em_with_format_penalty`` when the format is invalid.
    """

    scheme: str = "at2po"
    require_think: bool = False
    format_penalty: float = 0.2

    def __post_init__(self) -> None:
        if self.scheme not in _SCHEMES:
            raise ValueError(
                f"unknown reward scheme {self.scheme!r}; choose one of {', '.join(_SCHEMES)}"
            )
        if self.format_penalty < 0:
            raise ValueError(f"format_penalty must be >= 0, got {self.format_penalty}")


def score_response(
    response_text: str, golden_answers: Sequence[str], config: RewardConfig = RewardConfig()
) -> RewardResult:
    """Score a finished response (agent turns and observations, without the prompt).

    Sub-scores: ``em``, ``f1``, ``format_ok``, ``answered`` (a non-empty final answer exists),
    ``tool_calls`` (searches answered by a result, outside thinking). Everything comes from one
    linear-time pass of the grammar (:func:`at2po.tasks.agent_format.read_response`); the answer
    and the search count are read leniently (past any format problem, as
    :func:`~at2po.tasks.agent_format.extract_final_answer` and
    :func:`~at2po.tasks.agent_format.count_tool_calls` do), so ``em``, ``f1`` and ``tool_calls``
    do not depend on the format.
    """
    if isinstance(golden_answers, str) or not golden_answers:
        raise ValueError("golden_answers must be a non-empty sequence of strings")
    reading = read_response(response_text)
    answer = reading.final_answer
    em = exact_match(answer, golden_answers) if answer is not None else 0.0
    f1 = token_f1(answer, golden_answers) if answer is not None else 0.0
    ok = _format_ok(reading.check, config.require_think)
    reward = _SCHEMES[config.scheme](em, f1, ok, config.format_penalty)
    scores = {
        "em": em,
        "f1": f1,
        "format_ok": float(ok),
        "answered": float(answer is not None),
        "tool_calls": float(reading.tool_calls),
    }
    return RewardResult(reward=reward, scores=scores)
