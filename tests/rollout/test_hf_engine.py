"""HFEngine on a tiny real model: exact log-probs, stopping, seeding, prefix-cache reuse.

The reference for every log-prob is an independent teacher-forced forward of the whole sequence
(context + generated ids) through the same model, without any cache.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transformers import AutoModelForCausalLM, GPT2Config, MistralConfig, Qwen2Config

from at2po.rollout.engine import (
    FINISH_LENGTH,
    FINISH_STOP_STRING,
    FINISH_STOP_TOKEN,
    Engine,
    GenerationRequest,
    SamplingParams,
)
from at2po.rollout.hf_engine import HFEngine

TOL = 1e-4


def random_ids(count: int, vocab: int, seed: int) -> tuple[int, ...]:
    generator = torch.Generator().manual_seed(seed)
    return tuple(torch.randint(3, vocab, (count,), generator=generator).tolist())


def teacher_forced(model, context, tokens, temperature=1.0):
    """Per generated position: log-prob of the token, full-vocab entropy, argmax of the logits."""
    with torch.no_grad():
        logits = model(torch.tensor([list(context) + list(tokens)])).logits[0].float()
    logits = logits[len(context) - 1 : -1]
    logp = torch.log_softmax(logits / temperature, dim=-1)
    chosen = logp.gather(1, torch.tensor(tokens)[:, None]).squeeze(1)
    ent = -(logp.exp() * logp).sum(-1)
    return chosen, ent, logits.argmax(-1)


def assert_exact(model, request, result, temperature=1.0):
    chosen, ent, _ = teacher_forced(model, request.prompt_ids, result.token_ids, temperature)
    assert torch.allclose(torch.tensor(result.logprobs), chosen, atol=TOL, rtol=0)
    if result.entropies is not None:
        assert torch.allclose(torch.tensor(result.entropies), ent, atol=TOL, rtol=0)


@pytest.fixture
def engine(tiny_lm):
    model, tokenizer = tiny_lm
    return HFEngine(model, tokenizer)


def test_engine_satisfies_protocol(engine):
    assert isinstance(engine, Engine)


# ---------------------------------------------------------------- exactness


@pytest.mark.parametrize("temperature", [1.0, 0.7, 1.6])
def test_logprobs_and_entropies_match_teacher_forcing_in_a_mixed_batch(tiny_lm, temperature):
    model, tokenizer = tiny_lm
    engine = HFEngine(model, tokenizer)
    vocab = engine.vocab_size
    requests = [
        GenerationRequest(
            random_ids(length, vocab, seed=length),
            max_new_tokens=budget,
            sampling=SamplingParams(temperature=temperature),
            seed=index,
            return_entropy=True,
        )
        for index, (length, budget) in enumerate([(40, 20), (7, 5), (63, 30), (25, 12)])
    ]
    results = engine.generate(requests)
    for request, result in zip(requests, results, strict=True):
        assert result.finish_reason == FINISH_LENGTH
        assert len(result.token_ids) == request.max_new_tokens
        assert result.prefill_tokens == len(request.prompt_ids)
        assert result.cached_tokens == 0
        assert_exact(model, request, result, temperature)


def test_continuation_after_observation_reuses_the_trajectory_cache(tiny_lm):
    model, tokenizer = tiny_lm
    engine = HFEngine(model, tokenizer)
    prompt = random_ids(30, engine.vocab_size, seed=1)
    observation = tuple(tokenizer.encode(" <result>\nparis city\n</result>"))
    first = engine.generate([GenerationRequest(prompt, max_new_tokens=12, seed=3)])[0]

    context = prompt + first.token_ids + observation
    request = GenerationRequest(context, max_new_tokens=10, seed=4, return_entropy=True)
    second = engine.generate([request])[0]

    # The last sampled token of turn 1 was never run through the model, so it is prefilled too.
    assert second.prefill_tokens == len(observation) + 1
    assert second.cached_tokens == len(context) - len(observation) - 1
    assert_exact(model, request, second)

    no_reuse = HFEngine(model, tokenizer, reuse_prefix_cache=False).generate([request])[0]
    assert no_reuse.cached_tokens == 0
    assert no_reuse.prefill_tokens == len(context)
    assert no_reuse.token_ids == second.token_ids
    assert torch.allclose(torch.tensor(no_reuse.logprobs), torch.tensor(second.logprobs), atol=TOL)


def test_branch_from_an_earlier_turn_starts_from_a_cropped_copy(tiny_lm):
    model, tokenizer = tiny_lm
    engine = HFEngine(model, tokenizer)
    prompt = random_ids(24, engine.vocab_size, seed=2)
    observation = tuple(tokenizer.encode(" <result>\nold king\n</result>"))
    turn1 = engine.generate([GenerationRequest(prompt, max_new_tokens=9, seed=0)])[0]
    turn2_context = prompt + turn1.token_ids + observation
    engine.generate([GenerationRequest(turn2_context, max_new_tokens=9, seed=1)])

    # Re-sample turn 2 and turn 1: both contexts are prefixes of the stored trajectory.
    branches = [
        GenerationRequest(turn2_context, max_new_tokens=9, seed=7),
        GenerationRequest(prompt, max_new_tokens=9, seed=8),
    ]
    results = engine.generate(branches)
    for request, result in zip(branches, results, strict=True):
        assert result.cached_tokens == len(request.prompt_ids) - 1
        assert result.prefill_tokens == 1
        assert_exact(model, request, result)
    # The original trajectory's entry is untouched by the branches: it still serves turn 3.
    turn3_context = turn2_context + results[0].token_ids
    turn3 = engine.generate([GenerationRequest(turn3_context, max_new_tokens=4)])[0]
    assert turn3.cached_tokens >= len(turn2_context) - 1


def test_chains_of_one_prompt_prefill_the_shared_prompt_once(tiny_lm):
    model, tokenizer = tiny_lm
    engine = HFEngine(model, tokenizer)
    prompt = random_ids(50, engine.vocab_size, seed=3)
    requests = [GenerationRequest(prompt, max_new_tokens=6, seed=s) for s in range(5)]
    results = engine.generate(requests)
    assert sum(r.prefill_tokens for r in results) == (len(prompt) - 1) + len(requests)
    for request, result in zip(requests, results, strict=True):
        assert result.prefill_tokens + result.cached_tokens == len(prompt)
        assert_exact(model, request, result)
    assert len({r.token_ids for r in results}) > 1


def test_results_do_not_depend_on_batch_composition(tiny_lm):
    model, tokenizer = tiny_lm
    vocab = model.config.vocab_size
    target = GenerationRequest(random_ids(20, vocab, seed=5), max_new_tokens=15, seed=11)
    others = [
        GenerationRequest(random_ids(n, vocab, seed=n), max_new_tokens=b, seed=n)
        for n, b in [(55, 3), (9, 25), (33, 15)]
    ]
    alone = HFEngine(model, tokenizer).generate([target])[0]
    batched = HFEngine(model, tokenizer).generate([others[0], target, *others[1:]])[1]
    small_batches = HFEngine(model, tokenizer, max_batch_size=2).generate([*others, target])[-1]
    for result in (batched, small_batches):
        assert result.token_ids == alone.token_ids
        assert torch.allclose(torch.tensor(result.logprobs), torch.tensor(alone.logprobs), atol=TOL)


def test_different_seeds_give_different_samples(engine):
    prompt = random_ids(10, engine.vocab_size, seed=6)
    a, b = engine.generate(
        [GenerationRequest(prompt, 20, seed=0), GenerationRequest(prompt, 20, seed=1)]
    )
    assert a.token_ids != b.token_ids


def test_eager_attention_is_exact_with_padding_and_cache(tiny_lm_dir, tiny_lm):
    _, tokenizer = tiny_lm
    model = AutoModelForCausalLM.from_pretrained(tiny_lm_dir, attn_implementation="eager").eval()
    engine = HFEngine(model, tokenizer)
    prompt = random_ids(20, engine.vocab_size, seed=9)
    first = engine.generate([GenerationRequest(prompt, max_new_tokens=8)])[0]
    requests = [
        GenerationRequest(prompt + first.token_ids + (5, 6, 7), max_new_tokens=6, seed=1),
        GenerationRequest(random_ids(45, engine.vocab_size, seed=10), max_new_tokens=6, seed=2),
    ]
    results = engine.generate(requests)
    assert results[0].cached_tokens > 0
    for request, result in zip(requests, results, strict=True):
        assert_exact(model, request, result)


@pytest.mark.parametrize(
    "config",
    [
        GPT2Config(vocab_size=300, n_embd=64, n_layer=2, n_head=4, n_positions=256),
        Qwen2Config(
            vocab_size=300,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=256,
            initializer_range=0.2,
        ),
    ],
    ids=["gpt2", "qwen2"],
)
def test_other_architectures_are_exact_with_cache_reuse(tiny_lm, config):
    _, tokenizer = tiny_lm
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    engine = HFEngine(model, tokenizer)
    prompt = random_ids(15, 300, seed=12)
    first = engine.generate([GenerationRequest(prompt, max_new_tokens=7)])[0]
    requests = [
        GenerationRequest(prompt + first.token_ids + (4, 5), max_new_tokens=6, seed=1),
        GenerationRequest(random_ids(31, 300, seed=13), max_new_tokens=9, seed=2),
    ]
    results = engine.generate(requests)
    assert results[0].cached_tokens == len(prompt) + len(first.token_ids) - 1
    for request, result in zip(requests, results, strict=True):
        assert_exact(model, request, result)


# ---------------------------------------------------------------- decoding rules


def test_greedy_is_the_argmax_of_teacher_forced_logits(tiny_lm, engine):
    model, _ = tiny_lm
    request = GenerationRequest(
        random_ids(12, engine.vocab_size, seed=14), 25, sampling=SamplingParams(greedy=True)
    )
    result = engine.generate([request])[0]
    chosen, _, argmax = teacher_forced(model, request.prompt_ids, result.token_ids)
    assert list(result.token_ids) == argmax.tolist()
    assert torch.allclose(torch.tensor(result.logprobs), chosen, atol=TOL)


@pytest.mark.parametrize(
    "sampling",
    [SamplingParams(top_k=1), SamplingParams(top_p=1e-6), SamplingParams(temperature=0.5, top_k=1)],
)
def test_top_k_one_and_tiny_top_p_equal_greedy(engine, sampling):
    prompt = random_ids(12, engine.vocab_size, seed=15)
    greedy = engine.generate([GenerationRequest(prompt, 20, sampling=SamplingParams(greedy=True))])
    truncated = engine.generate([GenerationRequest(prompt, 20, sampling=sampling, seed=3)])
    assert truncated[0].token_ids == greedy[0].token_ids


def test_top_k_draws_stay_inside_the_top_k(tiny_lm, engine):
    model, _ = tiny_lm
    request = GenerationRequest(
        random_ids(12, engine.vocab_size, seed=16), 40, sampling=SamplingParams(top_k=3), seed=1
    )
    result = engine.generate([request])[0]
    chosen, _, _ = teacher_forced(model, request.prompt_ids, result.token_ids)
    full = list(request.prompt_ids) + list(result.token_ids)
    with torch.no_grad():
        logits = model(torch.tensor([full])).logits[0, len(request.prompt_ids) - 1 : -1]
    top3 = logits.topk(3, dim=-1).indices
    assert all(t in row for t, row in zip(result.token_ids, top3.tolist(), strict=True))
    assert torch.allclose(torch.tensor(result.logprobs), chosen, atol=TOL)


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    lengths=st.lists(st.integers(1, 40), min_size=1, max_size=4),
    budgets=st.lists(st.integers(1, 12), min_size=4, max_size=4),
    seed=st.integers(0, 1000),
    stop_count=st.integers(0, 40),
)
def test_no_request_passes_its_budget_and_finish_reasons_hold(
    engine, lengths, budgets, seed, stop_count
):
    stop_ids = tuple(range(3, 3 + stop_count))
    requests = [
        GenerationRequest(
            random_ids(n, engine.vocab_size, seed=seed + i),
            max_new_tokens=budgets[i],
            stop_token_ids=stop_ids,
            seed=seed + i,
        )
        for i, n in enumerate(lengths)
    ]
    for request, result in zip(requests, engine.generate(requests), strict=True):
        n = len(result.token_ids)
        assert 1 <= n <= request.max_new_tokens
        assert len(result.logprobs) == len(result.forced_mask) == n
        assert all(lp <= 0 for lp in result.logprobs)
        assert not any(t in stop_ids for t in result.token_ids[:-1])
        if result.finish_reason == FINISH_STOP_TOKEN:
            assert result.token_ids[-1] in stop_ids
        else:
            assert result.finish_reason == FINISH_LENGTH
            assert n == request.max_new_tokens
        assert result.prefill_tokens + result.cached_tokens == len(request.prompt_ids)


def test_stop_token_drawn_by_the_model_ends_the_request(engine):
    prompt = random_ids(10, engine.vocab_size, seed=17)
    free = engine.generate([GenerationRequest(prompt, 20, sampling=SamplingParams(greedy=True))])
    stop = free[0].token_ids[6]
    first = free[0].token_ids.index(stop)
    stopped = engine.generate(
        [
            GenerationRequest(
                prompt, 20, stop_token_ids=(stop,), sampling=SamplingParams(greedy=True)
            )
        ]
    )[0]
    assert stopped.finish_reason == FINISH_STOP_TOKEN
    assert stopped.stop_string is None
    assert stopped.token_ids == free[0].token_ids[: first + 1]


def first_containing(tokenizer, token_ids, text):
    """Smallest k such that the decoded first k ids contain ``text`` (decoding every prefix)."""
    for k in range(1, len(token_ids) + 1):
        if text in tokenizer.decode(token_ids[:k]):
            return k
    return None


def test_multi_token_stop_string_from_sampled_text(tiny_lm, engine):
    _, tokenizer = tiny_lm
    prompt = random_ids(10, engine.vocab_size, seed=18)
    greedy = SamplingParams(greedy=True)
    free = engine.generate([GenerationRequest(prompt, 30, sampling=greedy)])[0]
    stop = tokenizer.decode(free.token_ids[8:11])
    assert len(tokenizer.encode(stop)) > 1
    k = first_containing(tokenizer, free.token_ids, stop)

    result = engine.generate([GenerationRequest(prompt, 30, stop_strings=(stop,), sampling=greedy)])
    assert result[0].finish_reason == FINISH_STOP_STRING
    assert result[0].stop_string == stop
    assert result[0].token_ids == free.token_ids[:k]


@pytest.mark.parametrize("stop", ["</search>", "</answer>"], ids=["several_ids", "one_id"])
def test_stop_string_completed_by_forced_ids_is_kept(tiny_lm, engine, stop):
    _, tokenizer = tiny_lm
    forced = tokenizer.encode(stop)
    assert (len(forced) > 1) == (stop == "</search>")

    def write_stop_after_three(generated: list[int]) -> int | None:
        step = len(generated) - 3
        return forced[step] if 0 <= step < len(forced) else None

    request = GenerationRequest(
        random_ids(10, engine.vocab_size, seed=19),
        max_new_tokens=30,
        stop_strings=("</python>", stop),
        token_hook=write_stop_after_three,
    )
    result = engine.generate([request])[0]
    assert result.finish_reason == FINISH_STOP_STRING
    assert result.stop_string == stop
    assert list(result.token_ids[3:]) == forced
    assert tokenizer.decode(result.token_ids).endswith(stop)
    assert result.forced_mask == (False,) * 3 + (True,) * len(forced)


def test_stop_string_must_be_completed_inside_the_generated_text(tiny_lm, engine):
    _, tokenizer = tiny_lm
    prompt = tuple(tokenizer.encode("<search>paris</sea"))
    tail = tokenizer.encode("rch>")

    def write_tail(generated: list[int]) -> int | None:
        return tail[len(generated)] if len(generated) < len(tail) else None

    request = GenerationRequest(
        prompt, max_new_tokens=len(tail) + 2, stop_strings=("</search>",), token_hook=write_tail
    )
    result = engine.generate([request])[0]
    assert tokenizer.decode(prompt + result.token_ids).startswith("<search>paris</search>")
    assert result.finish_reason == FINISH_LENGTH


def test_token_hook_forces_tokens_and_records_their_model_logprobs(tiny_lm, engine):
    model, tokenizer = tiny_lm
    eos = tokenizer.eos_token_id

    def force_even_steps(generated: list[int]) -> int | None:
        return 7 if len(generated) % 2 == 0 else None

    request = GenerationRequest(
        random_ids(10, engine.vocab_size, seed=20),
        max_new_tokens=9,
        stop_token_ids=(eos,),
        token_hook=force_even_steps,
        return_entropy=True,
    )
    result = engine.generate([request])[0]
    assert result.forced_mask == tuple(i % 2 == 0 for i in range(9))
    assert all(t == 7 for t, f in zip(result.token_ids, result.forced_mask, strict=True) if f)
    assert_exact(model, request, result)

    def force_eos(generated: list[int]) -> int | None:
        return eos if len(generated) == 2 else None

    ended = engine.generate(
        [GenerationRequest(request.prompt_ids, 9, stop_token_ids=(eos,), token_hook=force_eos)]
    )[0]
    assert ended.finish_reason == FINISH_STOP_TOKEN
    assert len(ended.token_ids) == 3 and ended.token_ids[-1] == eos


# ---------------------------------------------------------------- cache lifecycle and errors


def test_cache_is_forgotten_when_weights_change(tiny_lm_dir, tiny_lm):
    _, tokenizer = tiny_lm
    model = AutoModelForCausalLM.from_pretrained(tiny_lm_dir).eval()
    engine = HFEngine(model, tokenizer)
    prompt = random_ids(20, engine.vocab_size, seed=21)
    first = engine.generate([GenerationRequest(prompt, 5)])[0]
    context = prompt + first.token_ids
    assert engine.generate([GenerationRequest(context, 3)])[0].cached_tokens > 0

    with torch.no_grad():
        model.lm_head.weight.mul_(1.5)
    request = GenerationRequest(context, 3)
    result = engine.generate([request])[0]
    assert result.cached_tokens == 0
    assert_exact(model, request, result)


def test_capacity_zero_never_reuses(tiny_lm):
    model, tokenizer = tiny_lm
    engine = HFEngine(model, tokenizer, cache_capacity_tokens=0)
    prompt = random_ids(20, engine.vocab_size, seed=22)
    first = engine.generate([GenerationRequest(prompt, 5)])[0]
    assert engine.generate([GenerationRequest(prompt + first.token_ids, 3)])[0].cached_tokens == 0


def test_bad_requests_are_refused_with_a_reason(engine):
    with pytest.raises(ValueError, match="outside the model's vocabulary"):
        engine.generate([GenerationRequest((1, 2, engine.vocab_size), 4)])
    with pytest.raises(ValueError, match="max_position_embeddings"):
        engine.generate([GenerationRequest((1,) * 1000, 100)])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        engine.generate([GenerationRequest((1, 2), 4, token_hook=lambda ids: -1)])
    with pytest.raises(ValueError, match="empty"):
        GenerationRequest((), 4)
    with pytest.raises(ValueError, match="max_new_tokens"):
        GenerationRequest((1,), 0)
    with pytest.raises(ValueError, match="empty string"):
        GenerationRequest((1,), 4, stop_strings=("",))
    with pytest.raises(ValueError, match="greedy=True"):
        SamplingParams(temperature=0.0)
    with pytest.raises(ValueError, match="top_p"):
        SamplingParams(top_p=0.0)
    with pytest.raises(ValueError, match="top_k"):
        SamplingParams(top_k=0)


def test_sliding_window_models_are_refused(tiny_lm):
    _, tokenizer = tiny_lm
    config = MistralConfig(
        vocab_size=300,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        sliding_window=16,
    )
    with pytest.raises(ValueError, match="full causal attention"):
        HFEngine(AutoModelForCausalLM.from_config(config), tokenizer)


def test_from_pretrained_loads_a_model_directory(tiny_lm_dir, tiny_lm, tmp_path):
    model, _ = tiny_lm
    engine = HFEngine.from_pretrained(tiny_lm_dir, device="cpu")
    assert engine.dtype == torch.float32
    request = GenerationRequest(random_ids(10, engine.vocab_size, seed=23), 6)
    assert_exact(model, request, engine.generate([request])[0])
    with pytest.raises(FileNotFoundError, match="save_pretrained"):
        HFEngine.from_pretrained(tmp_path / "missing")


def test_decoding_past_the_preallocated_room_stays_exact(tiny_lm, engine, monkeypatch):
    model, _ = tiny_lm
    monkeypatch.setattr("at2po.rollout.kv_cache.ROOM_STEP", 4)
    monkeypatch.setattr("at2po.rollout.hf_engine.ROOM_STEP", 4)
    requests = [
        GenerationRequest(random_ids(n, engine.vocab_size, seed=24 + n), max_new_tokens=b, seed=n)
        for n, b in [(8, 40), (30, 25), (3, 33)]
    ]
    for request, result in zip(requests, engine.generate(requests), strict=True):
        assert len(result.token_ids) == request.max_new_tokens
        assert_exact(model, request, result)
