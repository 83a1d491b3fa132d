"""Does a held-out question need the search? A policy's exact match when it must answer at once.

The shared-name worlds reuse one inventory of names, so a policy could in principle answer a
held-out question from what it remembers of training worlds. :func:`answer_at_once_em` measures
that: the policy gets the prompt and a forced first turn ``<think>I will answer now.</think>``
followed by ``<answer>``, and writes the answer greedily without any search result. If facts
carried over between worlds, this would score well above chance; the project's test holds it
under 2 % on 200 held-out questions.
"""

from __future__ import annotations

from collections.abc import Sequence

from at2po.rollout.codec import Codec
from at2po.rollout.engine import GenerationRequest, SamplingParams
from at2po.rollout.hf_engine import HFEngine
from at2po.tasks.datasets import QAExample
from at2po.tasks.search_env import SearchQAEnv

FORCED_TURN = "<think>I will answer now.</think>\n<answer>"
"""The start of the forced first turn; the policy writes the rest of the answer."""


def answer_at_once_em(
    engine: HFEngine,
    codec: Codec,
    env: SearchQAEnv,
    examples: Sequence[QAExample],
    max_answer_tokens: int = 24,
) -> tuple[float, list[str]]:
    """Mean exact match of the greedy answers written right after :data:`FORCED_TURN` (the
    prompt is ``env``'s), and the answers themselves (in the order of ``examples``)."""
    if not examples:
        raise ValueError("answer_at_once_em() needs at least one example")
    forced = codec.tokenizer.encode(FORCED_TURN, add_special_tokens=False)
    requests = [
        GenerationRequest(
            prompt_ids=tuple(codec.encode_prompt(env.reset(ex).prompt_messages())) + tuple(forced),
            max_new_tokens=max_answer_tokens,
            stop_strings=("</answer>",),
            stop_token_ids=(codec.tokenizer.eos_token_id,),
            sampling=SamplingParams(greedy=True),
        )
        for ex in examples
    ]
    answers: list[str] = []
    em = 0.0
    for start in range(0, len(requests), engine.max_batch_size):
        results = engine.generate(requests[start : start + engine.max_batch_size])
        for example, result in zip(examples[start:], results, strict=False):
            text = codec.decode(result.token_ids)
            answers.append(text.split("</answer>")[0].strip())
            em += env.reward(FORCED_TURN + text, example).scores["em"]
    return em / len(examples), answers
