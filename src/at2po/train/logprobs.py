"""Log-probs (and entropies) of the rows' tokens under the training model, micro-batched.

For row b and position t, with z[b, t−1] the logits the model computes at position t − 1 (they
predict token t) and T the rollout temperature:

    logp[b, t] = log_softmax(z[b, t−1] / T)[x[b, t]] = z[b, t−1, x_t]/T − logsumexp(z[b, t−1]/T)
    H[b, t]    = logsumexp(z/T) − Σ_v softmax(z/T)_v · z_v / T

This is the distribution the engine records (:mod:`at2po.rollout.engine`), so recomputed and
rollout log-probs agree to float error. Positions before the micro-batch's shortest prompt get 0:
no trained token lies there, so the LM head is only run from that prompt's last token on
(``logits_to_keep``), which skips most of the vocabulary projection of the shared prompt.

Shared prefix: the rows of a micro-batch usually begin with the same tokens (the instruction of
the prompt, or a whole prompt and earlier turns in a tree). When P ≥ ``MIN_SHARED_PREFIX`` leading
tokens are the same real token in every row (and none is a log-prob target), they are run once
for one row, their keys/values repeated over the batch, and only the rest of each row is run on
top (with its true positions). Gradients flow through the shared keys/values, so log-probs and
their gradients are those of the plain forward (to float rounding) at a fraction of the cost.

Micro-batches (:func:`micro_batches`) hold at most ``token_budget`` padded tokens (rows × longest
row) and are cut to their longest row, longest rows first so similar lengths share a batch.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence

import torch
from transformers import DynamicCache

from at2po.train.packing import EntropyMode, pack_rows, packed_logprobs, packed_micro_batches

MIN_SHARED_PREFIX = 16
"""Shorter shared prefixes are not worth a separate forward."""


def micro_batches(lengths: Sequence[int], token_budget: int) -> list[list[int]]:
    """Indices into ``lengths`` grouped so that rows × longest row ≤ ``token_budget`` (a row longer
    than the budget goes alone), longest rows first."""
    if token_budget < 1:
        raise ValueError(f"token_budget={token_budget} must be at least 1")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    groups: list[list[int]] = []
    for i in order:
        if groups and (len(groups[-1]) + 1) * lengths[groups[-1][0]] <= token_budget:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


def shared_prefix_length(
    input_ids_BT: torch.Tensor, attention_mask_BT: torch.Tensor, limit: int
) -> int:
    """Leading positions (at most ``limit``) where every row holds the same real token."""
    same_T = (input_ids_BT == input_ids_BT[:1]).all(dim=0) & attention_mask_BT.bool().all(dim=0)
    return min(int(same_T.long().cumprod(dim=0).sum()), limit)


def _forward_logits(
    model: torch.nn.Module,
    input_ids_BT: torch.Tensor,
    attention_mask_BT: torch.Tensor,
    keep: int,
    prefix: int,
) -> torch.Tensor:
    """Logits of the last ``keep`` positions, running a shared prefix of ``prefix`` tokens once
    (module docstring) when it is long enough and there is more than one row."""
    params = inspect.signature(model.forward).parameters
    kwargs = {"logits_to_keep": keep} if "logits_to_keep" in params else {}
    batch, width = input_ids_BT.shape
    if prefix < MIN_SHARED_PREFIX or batch == 1:
        return model(input_ids=input_ids_BT, attention_mask=attention_mask_BT, **kwargs).logits
    cache_kwarg = "cache" if "cache" in params else "past_key_values"
    cache = DynamicCache()
    prefix_kwargs = {"logits_to_keep": 1} if kwargs else {}
    model(
        input_ids=input_ids_BT[:1, :prefix], use_cache=True, **{cache_kwarg: cache}, **prefix_kwargs
    )
    cache.batch_repeat_interleave(batch)
    positions_BT = torch.arange(prefix, width, device=input_ids_BT.device).expand(batch, -1)
    return model(
        input_ids=input_ids_BT[:, prefix:],
        attention_mask=attention_mask_BT,
        position_ids=positions_BT,
        **{cache_kwarg: cache},
        **kwargs,
    ).logits


def token_logprobs(
    model: torch.nn.Module,
    input_ids_BT: torch.Tensor,
    attention_mask_BT: torch.Tensor,
    start: int,
    temperature: float = 1.0,
    entropy: EntropyMode = "none",
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(logp_BT, entropy_BT)`` of every token from position ``start`` on (0 before it).

    ``start`` ≥ 1 is the first position whose log-prob is needed (the shortest prompt length).
    ``entropy``: ``none`` skips it, ``detached`` computes it without gradient, ``grad`` with.
    Gradients flow into ``logp_BT`` when grad mode is on.
    """
    batch, width = input_ids_BT.shape
    if not 1 <= start < width:
        raise ValueError(f"start={start} must lie in [1, {width}) (a prompt token comes first)")
    keep = width - start + 1
    prefix = shared_prefix_length(input_ids_BT, attention_mask_BT, start - 1)
    logits = _forward_logits(model, input_ids_BT, attention_mask_BT, keep, prefix)
    z_BKV = logits[:, -keep:-1].float()
    if temperature != 1.0:
        z_BKV = z_BKV / temperature
    lse_BK = torch.logsumexp(z_BKV, dim=-1)
    targets_BK = input_ids_BT[:, start:]
    picked_BK = z_BKV.gather(-1, targets_BK.unsqueeze(-1)).squeeze(-1)
    lead_BS = z_BKV.new_zeros((batch, start))
    logp_BT = torch.cat([lead_BS, picked_BK - lse_BK], dim=1)
    if entropy == "none":
        return logp_BT, None
    with torch.set_grad_enabled(entropy == "grad" and torch.is_grad_enabled()):
        probs_BKV = torch.softmax(z_BKV, dim=-1)
        ent_BK = lse_BK - (probs_BKV * z_BKV).sum(dim=-1)
    return logp_BT, torch.cat([lead_BS, ent_BK], dim=1)


def row_micro_batches(
    input_ids_BT: torch.Tensor,
    lengths: Sequence[int],
    token_budget: int,
    packed_tokens: int | None,
) -> list[list[int]]:
    """Micro-batches of row indices: packed ones of at most ``packed_tokens`` distinct tokens
    (:func:`at2po.train.packing.packed_micro_batches`) when it is given, else padded ones of at
    most ``token_budget`` tokens (:func:`micro_batches`)."""
    if packed_tokens is None:
        return micro_batches(lengths, token_budget)
    return packed_micro_batches(input_ids_BT, lengths, packed_tokens)


def rows_logprobs(
    model: torch.nn.Module,
    input_ids_BT: torch.Tensor,
    attention_mask_BT: torch.Tensor,
    prompt_len_B: torch.Tensor,
    temperature: float,
    entropy: EntropyMode,
    packed: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(logp_BT, entropy_BT)`` of one micro-batch of rows from their prompt on: one forward over
    the packed distinct tokens (:mod:`at2po.train.packing`) or one padded forward
    (:func:`token_logprobs`). Both give the same values on every response token."""
    if packed:
        lengths = attention_mask_BT.sum(dim=1).tolist()
        layout = pack_rows(input_ids_BT.cpu(), lengths)
        return packed_logprobs(model, layout, prompt_len_B, temperature, entropy)
    start = int(prompt_len_B.min())
    return token_logprobs(model, input_ids_BT, attention_mask_BT, start, temperature, entropy)


def recompute_logprobs(
    model: torch.nn.Module,
    input_ids_BT: torch.Tensor,
    attention_mask_BT: torch.Tensor,
    prompt_len_B: torch.Tensor,
    temperature: float,
    token_budget: int,
    with_entropy: bool = False,
    packed_tokens: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs (and entropies) of whole rows without gradient, micro-batch by micro-batch
    (tree-packed ones of at most ``packed_tokens`` distinct tokens when it is given).

    Returns CPU float32 tensors of the rows' shape.
    """
    device = next(model.parameters()).device
    lengths = attention_mask_BT.sum(dim=1).tolist()
    logp_BT = torch.zeros(input_ids_BT.shape, dtype=torch.float32)
    entropy_BT = torch.zeros(input_ids_BT.shape, dtype=torch.float32) if with_entropy else None
    groups = row_micro_batches(input_ids_BT, lengths, token_budget, packed_tokens)
    with torch.no_grad():
        for group in groups:
            index = torch.tensor(group)
            width = int(max(lengths[i] for i in group))
            logp, ent = rows_logprobs(
                model,
                input_ids_BT[index, :width].to(device),
                attention_mask_BT[index, :width].to(device),
                prompt_len_B[index],
                temperature,
                "detached" if with_entropy else "none",
                packed_tokens is not None,
            )
            logp_BT[index, :width] = logp.float().cpu()
            if entropy_BT is not None and ent is not None:
                entropy_BT[index, :width] = ent.float().cpu()
    return logp_BT, entropy_BT
