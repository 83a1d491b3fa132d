"""Generation with a Hugging Face ``AutoModelForCausalLM``, reusing keys/values of known prefixes.

How one ``generate`` call runs (requests are taken ``max_batch_size`` at a time):

1. **Lookup.** Each request's context is matched against the :class:`PrefixCache`; the longest
   common prefix (at most context − 1 tokens, so the last context token is run to get the next
   logits) is reused. Contexts in the same batch that share a longer prefix with each other than
   with the cache (n chains of one prompt, K branches of one node) get that shared prefix run once
   in an extra forward and copied to each of them.
2. **Prefill.** One forward over the batch. Slot layout per row, left to right: padding, the
   row's cached keys/values, padding, the row's new context tokens. The 2-D attention mask hides
   every padding slot and ``position_ids`` give each real token its position in its own sequence,
   so padding never changes a row's log-probs (beyond float rounding).
3. **Decode.** One forward per step for all unfinished rows: temperature, top-k, top-p and greedy
   per row, vectorised; each row draws from its own seeded stream. A row stops on a stop token, a
   stop string in the decoded tail of its own generated tokens, or its own budget; it then leaves
   the batch, and its keys/values (context plus generated tokens but the last, which was never
   run) go into the prefix cache.
4. **T²PO.** When a request asks for uncertainty, every step also computes H_t, C_t and M_t of
   every row from the distribution the token was drawn from, and applies the thinking
   intervention of rows that have one (:class:`~at2po.rollout.intervention.ThinkState`, per-row
   tensors, no loop over rows).

The prefix cache is emptied whenever the model's parameters changed since the last call (checked
through the parameters' in-place version counters), so keys/values of an older policy are never
reused. Models whose attention is not full causal attention in every layer (sliding windows,
linear/recurrent layers) are refused, because the slot layout above assumes it.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache
from transformers.cache_utils import DynamicLayer

from at2po.rollout.engine import (
    FINISH_LENGTH,
    FINISH_STOP_STRING,
    FINISH_STOP_TOKEN,
    GenerationRequest,
    GenerationResult,
)
from at2po.rollout.intervention import StepOutput, ThinkState
from at2po.rollout.kv_cache import ROOM_STEP, batched_cache, row_kv
from at2po.rollout.prefix_cache import PrefixCache, common_prefix_length
from at2po.rollout.sampling import choose_tokens, entropy, tempered_logprobs
from at2po.rollout.stop_strings import StopStringMatcher


@dataclass
class _Rows:
    """Per-row decode state; every tensor has the batch as its first dimension."""

    mask_BS: torch.Tensor
    next_token_B: torch.Tensor
    position_B: torch.Tensor
    uniform_BT: torch.Tensor
    temperature_B: torch.Tensor
    greedy_B: torch.Tensor
    top_k_B: torch.Tensor
    top_p_B: torch.Tensor
    think: ThinkState | None

    def select(self, keep_B: torch.Tensor) -> _Rows:
        values = {f.name: getattr(self, f.name)[keep_B] for f in fields(self) if f.name != "think"}
        think = None if self.think is None else self.think.select(keep_B)
        return _Rows(**values, think=think)


@dataclass
class _Segment:
    """A context prefix shared by several requests of a batch, run once for all of them."""

    ids: np.ndarray
    kv_L2HTD: torch.Tensor
    prefilled: int


@dataclass
class _Draft:
    """A request's output while it is being generated."""

    token_ids: list[int]
    logprobs: list[float]
    forced: list[bool]
    entropies: list[float]
    uncertainty: list[float] = field(default_factory=list)
    confidences: list[float] = field(default_factory=list)
    bounds: tuple[float, float, float, float] | None = None
    intervention: str | None = None


class HFEngine:
    """:class:`~at2po.rollout.engine.Engine` over a transformers causal LM.

    Args:
        model: any ``AutoModelForCausalLM`` with full causal attention in every layer. The engine
            uses this object as is, so weight updates made on it are seen by the next call.
        tokenizer: its tokenizer (used to decode tails for stop strings).
        device: move the model there first (default: leave it where it is).
        dtype: cast the model to it first (default: leave it as it is).
        max_batch_size: most sequences decoded together in one forward.
        cache_capacity_tokens: most tokens of keys/values the prefix cache keeps; memory per token
            is ``2 × layers × kv_heads × head_dim × bytes per element``.
        reuse_prefix_cache: reuse keys/values of known prefixes; off, every context is prefilled
            in full (for comparisons).
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        max_batch_size: int = 64,
        cache_capacity_tokens: int = 32_768,
        reuse_prefix_cache: bool = True,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size={max_batch_size} must be >= 1")
        if device is not None or dtype is not None:
            model.to(device=device, dtype=dtype)
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.max_batch_size = max_batch_size
        self.reuse_prefix_cache = reuse_prefix_cache
        self.prefix_cache = PrefixCache(cache_capacity_tokens if reuse_prefix_cache else 0)
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        config = model.config.get_text_config()
        self.max_positions: int | None = getattr(config, "max_position_embeddings", None)
        _require_full_attention(model.config)
        forward_params = inspect.signature(model.forward).parameters
        self._cache_kwarg = "cache" if "cache" in forward_params else "past_key_values"
        self._last_logits_kwarg = (
            {"logits_to_keep": 1} if "logits_to_keep" in forward_params else {}
        )
        self.vocab_size = model.get_input_embeddings().num_embeddings
        self._kv_geometry = self._probe_kv_geometry()
        self._weights_seen: tuple[tuple[int, int], ...] | None = None
        self._matchers: dict[tuple[str, ...], StopStringMatcher] = {}

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        *,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        **engine_kwargs: Any,
    ) -> HFEngine:
        """Load model and tokenizer from a Hugging Face directory.

        Defaults: CUDA in bfloat16 when a GPU is present, else CPU in float32.
        """
        if not Path(path).is_dir():
            raise FileNotFoundError(
                f"model directory {path} does not exist; pass a directory written by "
                "save_pretrained (config.json, weights, tokenizer files)"
            )
        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if dtype is None:
            dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
        return cls(model, tokenizer, device=device, **engine_kwargs)

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        """Generate every request; results come back in request order."""
        for index, request in enumerate(requests):
            self._validate(index, request)
        self._forget_cache_if_weights_changed()
        results: list[GenerationResult] = []
        with torch.inference_mode():
            for start in range(0, len(requests), self.max_batch_size):
                results.extend(self._generate_batch(requests[start : start + self.max_batch_size]))
        return results

    def _probe_kv_geometry(self) -> dict[str, int]:
        """Layers, kv-heads and head size of the model's cache, read off a one-token forward."""
        cache = DynamicCache()
        one_11 = torch.ones((1, 1), dtype=torch.long, device=self.device)
        with torch.inference_mode():
            self._forward(one_11, one_11, one_11 - 1, cache)
        _, kv_heads, _, head_dim = cache.layers[0].keys.shape
        return {"layers": len(cache.layers), "kv_heads": kv_heads, "head_dim": head_dim}

    def _validate(self, index: int, request: GenerationRequest) -> None:
        largest = max(request.prompt_ids + request.stop_token_ids)
        if largest >= self.vocab_size:
            raise ValueError(
                f"request {index}: token id {largest} is outside the model's vocabulary "
                f"(size {self.vocab_size}); were the ids made with another tokenizer?"
            )
        total = len(request.prompt_ids) + request.max_new_tokens
        if self.max_positions is not None and total > self.max_positions:
            raise ValueError(
                f"request {index}: context {len(request.prompt_ids)} + max_new_tokens "
                f"{request.max_new_tokens} = {total} exceeds the model's "
                f"max_position_embeddings ({self.max_positions}); shorten the context or budget"
            )

    def _forget_cache_if_weights_changed(self) -> None:
        seen = tuple((p.data_ptr(), p._version) for p in self.model.parameters())
        if seen != self._weights_seen:
            self.prefix_cache.clear()
            self._weights_seen = seen

    def _matcher(self, stop_strings: tuple[str, ...]) -> StopStringMatcher | None:
        if not stop_strings:
            return None
        if stop_strings not in self._matchers:
            self._matchers[stop_strings] = StopStringMatcher(self.tokenizer, stop_strings)
        return self._matchers[stop_strings]

    def _generate_batch(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        contexts = [np.asarray(r.prompt_ids, dtype=np.int64) for r in requests]
        hits: list[tuple[int, torch.Tensor | None]] = [(0, None)] * len(requests)
        segments: list[_Segment] = []
        if self.reuse_prefix_cache:
            hits = [self.prefix_cache.longest_prefix(c, len(c) - 1) for c in contexts]
            segments = self._run_shared_segments(
                [r.prompt_ids for r in requests], [n for n, _ in hits]
            )
        reused = [_best_reuse(c, hit, segments) for c, hit in zip(contexts, hits, strict=True)]
        prefill_tokens, cached_tokens = _count_prefill(contexts, reused)

        budget = max(r.max_new_tokens for r in requests)
        cache, mask_BS, logits_BV = self._prefill(
            contexts, [(n, kv) for n, kv, _ in reused], budget
        )
        rows = self._initial_rows(requests, contexts, mask_BS)
        drafts = self._decode(requests, contexts, cache, rows, logits_BV)
        return [
            GenerationResult(
                token_ids=tuple(d.token_ids),
                logprobs=tuple(d.logprobs),
                forced_mask=tuple(d.forced),
                finish_reason=finish_reason,
                stop_string=stop_string,
                entropies=tuple(d.entropies) if r.return_entropy or r.uncertainty else None,
                prefill_tokens=prefill,
                cached_tokens=cached,
                uncertainty=tuple(d.uncertainty) if r.uncertainty else None,
                confidences=tuple(d.confidences) if r.uncertainty else None,
                bounds=d.bounds if r.uncertainty else None,
                intervention=d.intervention,
            )
            for r, (d, finish_reason, stop_string), prefill, cached in zip(
                requests, drafts, prefill_tokens, cached_tokens, strict=True
            )
        ]

    def _run_shared_segments(
        self, contexts: list[tuple[int, ...]], cached_lengths: list[int]
    ) -> list[_Segment]:
        """Run once each prefix that several contexts share beyond what the cache holds.

        The longest prefix a context shares with any other is found between neighbours in sorted
        order. A prefix that is itself a prefix of another chosen one is dropped (the longer one
        serves both).
        """
        arrays = [np.asarray(c, dtype=np.int64) for c in contexts]
        order = sorted(range(len(contexts)), key=contexts.__getitem__)
        shared = [0] * len(contexts)
        for a, b in pairwise(order):
            n = common_prefix_length(arrays[a], arrays[b])
            shared[a], shared[b] = max(shared[a], n), max(shared[b], n)
        wanted: dict[tuple[int, ...], np.ndarray] = {}
        for context, array, n_shared, n_cached in zip(
            contexts, arrays, shared, cached_lengths, strict=True
        ):
            n = min(n_shared, len(context) - 1)
            if n > n_cached:
                wanted.setdefault(context[:n], array[:n])
        chosen = [ids for ids in wanted.values() if not _extended_by_another(ids, wanted.values())]
        if not chosen:
            return []
        reused = [self.prefix_cache.longest_prefix(ids, len(ids) - 1) for ids in chosen]
        cache, mask_BS, _ = self._prefill(chosen, reused, budget=0)
        return [
            _Segment(ids, row_kv(cache, mask_BS, row), prefilled=len(ids) - n)
            for row, (ids, (n, _)) in enumerate(zip(chosen, reused, strict=True))
        ]

    def _prefill(
        self,
        contexts: Sequence[np.ndarray],
        reused: Sequence[tuple[int, torch.Tensor | None]],
        budget: int,
    ) -> tuple[DynamicCache, torch.Tensor, torch.Tensor]:
        """Run the uncached part of every context in one forward.

        Returns the batched cache (with room for ``budget`` more tokens, up to ``ROOM_STEP``), its
        attention mask over slots (1 = real token) and the logits of every row's next token.
        """
        batch = len(contexts)
        cached = [n for n, _ in reused]
        new = [len(c) - n for c, n in zip(contexts, cached, strict=True)]
        width_cached, width_new = max(cached), max(new)

        cache = batched_cache(
            reused,
            room=width_new + min(budget, ROOM_STEP),
            dtype=self.dtype,
            device=self.device,
            **self._kv_geometry,
        )
        ids_BN = np.zeros((batch, width_new), dtype=np.int64)
        position_BN = np.zeros((batch, width_new), dtype=np.int64)
        mask_BS = np.zeros((batch, width_cached + width_new), dtype=np.int64)
        for row, (context, n_cached, n_new) in enumerate(zip(contexts, cached, new, strict=True)):
            ids_BN[row, width_new - n_new :] = context[n_cached:]
            position_BN[row, width_new - n_new :] = np.arange(n_cached, len(context))
            mask_BS[row, width_cached - n_cached : width_cached] = 1
            mask_BS[row, width_cached + width_new - n_new :] = 1
        mask_BS = torch.from_numpy(mask_BS).to(self.device)
        logits_BV = self._forward(
            torch.from_numpy(ids_BN).to(self.device),
            mask_BS,
            torch.from_numpy(position_BN).to(self.device),
            cache,
            **self._last_logits_kwarg,
        )
        return cache, mask_BS, logits_BV

    def _forward(
        self,
        ids_BN: torch.Tensor,
        mask_BS: torch.Tensor,
        position_BN: torch.Tensor,
        cache: DynamicCache,
        **kwargs: Any,
    ) -> torch.Tensor:
        output = self.model(
            input_ids=ids_BN,
            attention_mask=mask_BS,
            position_ids=position_BN,
            use_cache=True,
            **{self._cache_kwarg: cache},
            **kwargs,
        )
        return output.logits[:, -1]

    def _initial_rows(
        self,
        requests: Sequence[GenerationRequest],
        contexts: list[np.ndarray],
        mask_BS: torch.Tensor,
    ) -> _Rows:
        longest = max(r.max_new_tokens for r in requests)
        uniform_BT = torch.zeros(len(requests), longest)
        for row, request in enumerate(requests):
            stream = torch.Generator().manual_seed(request.seed)
            uniform_BT[row, : request.max_new_tokens] = torch.rand(
                request.max_new_tokens, generator=stream
            )

        def per_row(values: list, dtype: torch.dtype) -> torch.Tensor:
            return torch.tensor(values, dtype=dtype, device=self.device)

        return _Rows(
            mask_BS=mask_BS,
            next_token_B=per_row([0] * len(requests), torch.long),
            position_B=per_row([len(c) for c in contexts], torch.long),
            uniform_BT=uniform_BT.to(self.device),
            temperature_B=per_row(
                [r.sampling.effective_temperature for r in requests], torch.float32
            ),
            greedy_B=per_row([r.sampling.greedy for r in requests], torch.bool),
            top_k_B=per_row([r.sampling.top_k for r in requests], torch.long),
            top_p_B=per_row([r.sampling.top_p for r in requests], torch.float32),
            think=ThinkState.for_requests(requests, self.device, self.vocab_size),
        )

    def _decode(
        self,
        requests: Sequence[GenerationRequest],
        contexts: list[np.ndarray],
        cache: DynamicCache,
        rows: _Rows,
        logits_BV: torch.Tensor,
    ) -> list[tuple[_Draft, str, str | None]]:
        """Sample until every request stops; returns each draft with its finish reason."""
        drafts = [_Draft([], [], [], []) for _ in requests]
        finished: list[tuple[_Draft, str, str | None] | None] = [None] * len(requests)
        matchers = [self._matcher(r.stop_strings) for r in requests]
        stop_ids = [frozenset(r.stop_token_ids) for r in requests]
        truncates = any(r.sampling.truncates for r in requests)
        want_entropy = any(r.return_entropy or r.uncertainty for r in requests)
        active = list(range(len(requests)))
        step = 0
        while True:
            logp_BV = tempered_logprobs(logits_BV, rows.temperature_B)
            token_B = choose_tokens(
                logits_BV,
                logp_BV,
                rows.uniform_BT[:, step],
                rows.greedy_B,
                rows.top_k_B if truncates else None,
                rows.top_p_B if truncates else None,
            )
            think = rows.think.step(logp_BV, token_B) if rows.think is not None else None
            if think is not None:
                token_B = think.token_B
            forced_rows = self._apply_hooks(requests, drafts, active, token_B)
            tokens = token_B.tolist()
            logprobs = logp_BV.gather(1, token_B[:, None]).squeeze(1).tolist()
            uncertainty = confidences = None
            if think is not None:
                forced, entropies, confidences, uncertainty = _columns(think)
                forced_rows |= {row for row, f in enumerate(forced) if f}
            else:
                entropies = entropy(logp_BV).tolist() if want_entropy else None

            done_rows = []
            for row, index in enumerate(active):
                draft, request = drafts[index], requests[index]
                draft.token_ids.append(tokens[row])
                draft.logprobs.append(logprobs[row])
                draft.forced.append(row in forced_rows)
                if entropies is not None:
                    draft.entropies.append(entropies[row])
                if uncertainty is not None and confidences is not None:
                    draft.uncertainty.append(uncertainty[row])
                    draft.confidences.append(confidences[row])
                stop_string = None
                if tokens[row] in stop_ids[index]:
                    reason = FINISH_STOP_TOKEN
                elif matchers[index] and (stop_string := matchers[index].match(draft.token_ids)):
                    reason = FINISH_STOP_STRING
                elif len(draft.token_ids) >= request.max_new_tokens:
                    reason = FINISH_LENGTH
                else:
                    continue
                finished[index] = (draft, reason, stop_string)
                done_rows.append(row)
                if rows.think is not None:
                    draft.bounds = rows.think.bounds(row)
                    draft.intervention = rows.think.intervention(row)
                if self.reuse_prefix_cache:
                    sequence = np.concatenate([contexts[index], draft.token_ids[:-1]])
                    self.prefix_cache.insert(sequence, row_kv(cache, rows.mask_BS, row))

            if len(done_rows) == len(active):
                return finished
            rows.next_token_B = token_B
            if done_rows:
                keep = [row for row in range(len(active)) if row not in done_rows]
                keep_B = torch.tensor(keep, device=self.device)
                cache.batch_select_indices(keep_B)
                rows = rows.select(keep_B)
                active = [active[row] for row in keep]
            rows.mask_BS = torch.cat([rows.mask_BS, rows.mask_BS.new_ones((len(active), 1))], dim=1)
            logits_BV = self._forward(
                rows.next_token_B[:, None], rows.mask_BS, rows.position_B[:, None], cache
            )
            rows.position_B = rows.position_B + 1
            step += 1

    def _apply_hooks(
        self,
        requests: Sequence[GenerationRequest],
        drafts: list[_Draft],
        active: list[int],
        token_B: torch.Tensor,
    ) -> set[int]:
        """Let each request's token hook force its next token; returns the rows it forced."""
        forced: dict[int, int] = {}
        for row, index in enumerate(active):
            hook = requests[index].token_hook
            if hook is None:
                continue
            token = hook(list(drafts[index].token_ids))
            if token is None:
                continue
            if not 0 <= token < self.vocab_size:
                raise ValueError(
                    f"token_hook of request {index} forced id {token}, outside the vocabulary "
                    f"(size {self.vocab_size})"
                )
            forced[row] = token
        if forced:
            token_B[list(forced)] = torch.tensor(list(forced.values()), device=token_B.device)
        return set(forced)


def _columns(think: StepOutput) -> tuple[list[bool], list[float], list[float], list[float]]:
    """Forced flags, H_t, C_t and M_t of a T²PO step as Python lists (one transfer)."""
    stacked = torch.stack(
        [
            think.forced_B.double(),
            think.entropy_B.double(),
            think.confidence_B.double(),
            think.uncertainty_B.double(),
        ]
    ).tolist()
    return [f == 1.0 for f in stacked[0]], stacked[1], stacked[2], stacked[3]


def _require_full_attention(config: Any) -> None:
    """Refuse models whose cache is not plain full attention in every layer."""
    layer_kinds = {type(layer).__name__ for layer in DynamicCache(config=config).layers}
    if layer_kinds - {DynamicLayer.__name__}:
        raise ValueError(
            f"HFEngine needs full causal attention in every layer, but this model's cache has "
            f"{sorted(layer_kinds)} layers (sliding-window or recurrent attention); use a model "
            "without them (e.g. set use_sliding_window=False) or another engine"
        )


def _extended_by_another(ids: np.ndarray, candidates: Iterable[np.ndarray]) -> bool:
    """Whether some longer candidate starts with ``ids``."""
    return any(
        len(other) > len(ids) and common_prefix_length(ids, other) == len(ids)
        for other in candidates
    )


def _best_reuse(
    context: np.ndarray, hit: tuple[int, torch.Tensor | None], segments: list[_Segment]
) -> tuple[int, torch.Tensor | None, _Segment | None]:
    """The longer of the prefix-cache hit and the best shared segment for this context."""
    best = (hit[0], hit[1], None)
    for segment in segments:
        n = min(common_prefix_length(context, segment.ids), len(context) - 1)
        if n > best[0]:
            best = (n, segment.kv_L2HTD[:, :, :, :n], segment)
    return best


def _count_prefill(
    contexts: list[np.ndarray], reused: list[tuple[int, torch.Tensor | None, _Segment | None]]
) -> tuple[list[int], list[int]]:
    """Tokens each request ran through the model and tokens it took from a cache.

    A shared segment's own prefill is charged to the first request that uses it, so the sum over
    requests is the number of tokens actually prefilled.
    """
    prefill, cached, charged_segments = [], [], set()
    for context, (n, _, segment) in zip(contexts, reused, strict=True):
        charged = 0
        if segment is not None and id(segment) not in charged_segments:
            charged_segments.add(id(segment))
            charged = segment.prefilled
        prefill.append(len(context) - n + charged)
        cached.append(n - charged)
    return prefill, cached
