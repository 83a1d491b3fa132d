"""Tree packing: the rows of a micro-batch as one sequence of their distinct tokens.

The rows of a turn tree share prefixes (the prompt, then every turn above a branch point). Two
tokens are the same *packed* token when their rows agree on everything up to and including them:
then the model computes the same hidden states there, so one copy serves every row. The packed
sequence is the trie of the rows' token sequences, laid out depth-first:

    row a:  P P P x y          packed:  P P P x y z w        position ids:  0 1 2 3 4 3 4
    row b:  P P P z w          index_BT: a → 0 1 2 3 4   b → 0 1 2 5 6

and each packed token attends to itself and its ancestors only (its row's prefix), with the
position id it has in its row, so its hidden states, logits and log-prob equal the per-row ones:

    attends(n, m)  ⇔  m is n or an ancestor of n
    logp[b, t] = log_softmax(z[parent(n)] / T)[x_n]          with n = index_BT[b, t]

Log-probs are read back per row through ``index_BT``, so a token shared by k rows enters the loss
k times with each row's own mask and advantage: the loss and its gradients are those of the
per-row forward (float rounding aside). Logits are only projected at the parents of the tokens
asked for (the vocabulary projection of the prompt is skipped).

Layout: rows are sorted lexicographically; a row shares with the trie exactly its longest common
prefix with the row before it in that order, and appends the rest — a contiguous *segment* of
new packed tokens at row positions [lcp, length).

Tree attention (``at2po_tree``, registered with transformers' ``AttentionInterface`` and used for
the packed forward only, whatever the model's own attention): a segment's queries, in chunks of
at most ``ATTENTION_CHUNK`` tokens, attend to the keys of their row's path up to the chunk's end,
causally (key position ≤ query position, both in row coordinates): one
``scaled_dot_product_attention`` call per chunk. The work is ≈ Σ over packed tokens of their
depth — the per-row forward's attention restricted to distinct queries — with no N × N mask.
Models whose attention does not go through ``AttentionInterface``, or that have sliding-window
layers, are refused with a clear error.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from transformers import AttentionInterface

from at2po.train.config import ConfigError

EntropyMode = Literal["none", "detached", "grad"]
"""``none`` skips the entropy, ``detached`` computes it without gradient, ``grad`` with."""

TREE_ATTENTION = "at2po_tree"
"""The name the tree attention is registered under with ``AttentionInterface``."""

ATTENTION_CHUNK = 256
"""Queries per attention call: a chunk attends causally within itself, so a larger chunk wastes
up to half of chunk² scores and a smaller one makes more calls."""


@dataclass(frozen=True)
class AttentionPlan:
    """The tree attention's calls for one packed sequence, shared by every layer.

    Call i takes the next ``query_sizes[i]`` packed queries (the calls cover the sequence in
    order) and the next ``key_sizes[i]`` entries of ``key_index_K`` as its keys, hidden where its
    additive ``masks[i]`` is −∞; a mask of None is a plain causal square (queries = keys). Keys
    are gathered with one index for all calls and queries split, never sliced one call at a
    time: each slice's backward would write a zero tensor the size of the whole sequence.
    """

    query_sizes: list[int]
    key_sizes: list[int]
    key_index_K: torch.Tensor
    masks: list[torch.Tensor | None]


@dataclass(frozen=True)
class PackedRows:
    """B rows packed into one sequence of N distinct tokens.

    Attributes:
        input_ids_N: the distinct tokens, depth-first (long).
        position_ids_N: each token's position in its rows (long).
        parent_N: packed index of the token before it in its rows, −1 for a row's first token.
        index_BT: packed index of token t of row b; 0 on padding (long).
        lengths_B: real tokens of each row (long).
        segments: ``(row, first, length)`` per row that adds tokens, in packed order: row ``row``'s
            positions ``[first, length)`` are new packed tokens, laid out consecutively.
    """

    input_ids_N: torch.Tensor
    position_ids_N: torch.Tensor
    parent_N: torch.Tensor
    index_BT: torch.Tensor
    lengths_B: torch.Tensor
    segments: tuple[tuple[int, int, int], ...]

    @property
    def num_tokens(self) -> int:
        return int(self.input_ids_N.shape[0])

    def attention_plan(
        self, device: torch.device, dtype: torch.dtype, chunk: int = ATTENTION_CHUNK
    ) -> AttentionPlan:
        """The tree attention's calls (module docstring): each segment in chunks of at most
        ``chunk`` queries; masks in ``dtype``."""
        query_sizes: list[int] = []
        key_paths: list[torch.Tensor] = []
        masks: list[torch.Tensor | None] = []
        for row, first, length in self.segments:
            for lo in range(first, length, chunk):
                hi = min(lo + chunk, length)
                query_sizes.append(hi - lo)
                key_paths.append(self.index_BT[row, :hi])
                if lo == 0:  # a row that shares nothing: its queries are its keys
                    masks.append(None)
                    continue
                hidden_QK = torch.arange(hi)[None, :] > torch.arange(lo, hi)[:, None]
                mask_QK = torch.zeros(hidden_QK.shape, dtype=dtype).masked_fill_(
                    hidden_QK, float("-inf")
                )
                masks.append(mask_QK.to(device))
        return AttentionPlan(
            query_sizes, [len(p) for p in key_paths], torch.cat(key_paths).to(device), masks
        )


def tree_attention(
    module: torch.nn.Module,
    query_BHND: torch.Tensor,
    key_BHND: torch.Tensor,
    value_BHND: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    tree_plan: AttentionPlan | None = None,
    **kwargs: object,
) -> tuple[torch.Tensor, None]:
    """The ``AttentionInterface`` function of the packed forward: one SDPA call per call of
    ``tree_plan`` (passed through the model's forward keyword arguments), on 4-D tensors (3-D ones
    fall back to PyTorch's slow math kernel on CPU); returns the output as (1, N, heads, head
    size), as transformers' attention functions do."""
    if tree_plan is None:
        raise RuntimeError(f"{TREE_ATTENTION} attention runs only inside packed_logprobs()")
    gqa = query_BHND.shape[1] != key_BHND.shape[1]
    index_K = tree_plan.key_index_K
    keys = key_BHND.index_select(2, index_K).split(tree_plan.key_sizes, dim=2)
    values = value_BHND.index_select(2, index_K).split(tree_plan.key_sizes, dim=2)
    queries = query_BHND.split(tree_plan.query_sizes, dim=2)
    outputs = [
        F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask,
            dropout_p=dropout,
            is_causal=mask is None,
            scale=scaling,
            enable_gqa=gqa,
        )
        for q, k, v, mask in zip(queries, keys, values, tree_plan.masks, strict=True)
    ]
    return torch.cat(outputs, dim=2).transpose(1, 2), None


AttentionInterface.register(TREE_ATTENTION, tree_attention)


def _sorted_rows(
    input_ids_BT: torch.Tensor, lengths_B: Sequence[int]
) -> tuple[list[int], torch.Tensor]:
    """Row indices in lexicographic order of their tokens, and each sorted row's longest common
    prefix with the row before it (0 for the first)."""
    rows = [input_ids_BT[b, : lengths_B[b]].tolist() for b in range(len(lengths_B))]
    order = sorted(range(len(rows)), key=lambda b: (rows[b], b))
    width = input_ids_BT.shape[1]
    ids_BT = input_ids_BT[order]
    len_B = torch.tensor([lengths_B[b] for b in order], dtype=torch.long)
    lcp_B = torch.zeros(len(order), dtype=torch.long)
    if len(order) > 1:
        inside_BT = torch.arange(width)[None, :] < torch.minimum(len_B[1:], len_B[:-1])[:, None]
        same_BT = (ids_BT[1:] == ids_BT[:-1]) & inside_BT
        lcp_B[1:] = same_BT.long().cumprod(dim=1).sum(dim=1)
    return order, lcp_B


def packed_micro_batches(
    input_ids_BT: torch.Tensor, lengths_B: Sequence[int], token_budget: int
) -> list[list[int]]:
    """Row indices grouped so that each group packs into at most ``token_budget`` distinct tokens
    (a row longer than the budget goes alone); rows that share prefixes stay together."""
    if token_budget < 1:
        raise ValueError(f"token_budget={token_budget} must be at least 1")
    order, lcp_B = _sorted_rows(input_ids_BT, lengths_B)
    groups: list[list[int]] = []
    used = 0
    for k, b in enumerate(order):
        new = lengths_B[b] - int(lcp_B[k])
        if groups and used + new <= token_budget:
            groups[-1].append(b)
            used += new
        else:
            groups.append([b])
            used = lengths_B[b]
    return groups


def pack_rows(input_ids_BT: torch.Tensor, lengths_B: Sequence[int]) -> PackedRows:
    """The packed layout of the module docstring for the rows of ``input_ids_BT``."""
    batch, width = input_ids_BT.shape
    if batch == 0 or min(lengths_B) < 1:
        raise ValueError("pack_rows() needs at least one row and a token in every row")
    order, lcp_B = _sorted_rows(input_ids_BT, lengths_B)
    index_BT = torch.zeros((batch, width), dtype=torch.long)
    pieces: list[torch.Tensor] = []
    segments: list[tuple[int, int, int]] = []
    used = 0
    previous = None
    for k, b in enumerate(order):
        length, shared = lengths_B[b], int(lcp_B[k])
        if previous is not None:
            index_BT[b, :shared] = index_BT[previous, :shared]
        if shared < length:
            index_BT[b, shared:length] = torch.arange(used, used + length - shared)
            pieces.append(input_ids_BT[b, shared:length])
            segments.append((b, shared, length))
            used += length - shared
        previous = b
    positions_BT = torch.arange(width).expand(batch, -1)
    real_BT = positions_BT < torch.tensor(list(lengths_B))[:, None]
    position_ids_N = torch.zeros(used, dtype=torch.long)
    position_ids_N[index_BT[real_BT]] = positions_BT[real_BT]
    parent_N = torch.full((used,), -1, dtype=torch.long)
    later_BT = real_BT & (positions_BT > 0)
    parent_N[index_BT[later_BT]] = index_BT.roll(1, dims=1)[later_BT]
    return PackedRows(
        torch.cat(pieces),
        position_ids_N,
        parent_N,
        index_BT,
        torch.tensor(list(lengths_B), dtype=torch.long),
        tuple(segments),
    )


def check_tree_attention_support(model: torch.nn.Module) -> None:
    """Raise a :class:`ConfigError` (a ValueError) when ``model`` cannot run the tree attention."""
    config = getattr(model, "config", None)
    if not getattr(model, "_supports_attention_backend", False) or config is None:
        raise ConfigError(
            f"tree packing needs a transformers model whose attention goes through "
            f"AttentionInterface; {type(model).__name__} does not: set optim.packing=false"
        )
    layer_types = getattr(config, "layer_types", None)
    if layer_types is not None:  # per-layer kinds where the model declares them (Qwen, Gemma…)
        sliding = any("sliding" in kind for kind in layer_types)
    else:
        sliding = bool(getattr(config, "sliding_window", None))
    if sliding:
        raise ConfigError(
            "tree packing gives every layer the whole path as context, but this model has "
            "sliding-window attention layers; set optim.packing=false"
        )


@contextlib.contextmanager
def _tree_attention_on(model: torch.nn.Module) -> Iterator[None]:
    """Route the model's attention to :func:`tree_attention` for the duration."""
    config = model.config
    saved = config._attn_implementation
    config._attn_implementation = TREE_ATTENTION
    try:
        yield
    finally:
        config._attn_implementation = saved


def packed_logprobs(
    model: torch.nn.Module,
    packed: PackedRows,
    start_B: torch.Tensor,
    temperature: float = 1.0,
    entropy: EntropyMode = "none",
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(logp_BT, entropy_BT)`` of token t of row b for ``start_B[b]`` ≤ t < its length (0
    elsewhere), from one forward over the packed tokens (module docstring).

    ``start_B[b]`` ≥ 1 (a row's first token has no log-prob). Gradients flow into ``logp_BT`` in
    grad mode.
    """
    check_tree_attention_support(model)
    weight = next(model.parameters())
    device = weight.device
    batch, width = packed.index_BT.shape
    if int(start_B.min()) < 1:
        raise ValueError("start_B must be at least 1 (a row's first token has no log-prob)")
    positions_BT = torch.arange(width).expand(batch, -1)
    wanted_BT = (positions_BT >= start_B[:, None]) & (positions_BT < packed.lengths_B[:, None])
    targets_K = torch.unique(packed.index_BT[wanted_BT])
    parents_P, parent_of_K = torch.unique(packed.parent_N[targets_K], return_inverse=True)
    params = inspect.signature(model.forward).parameters
    keep = {"logits_to_keep": parents_P.to(device)} if "logits_to_keep" in params else {}
    with _tree_attention_on(model):
        logits = model(
            input_ids=packed.input_ids_N[None].to(device),
            position_ids=packed.position_ids_N[None].to(device),
            tree_plan=packed.attention_plan(device, weight.dtype),
            **keep,
        ).logits[0]
    z_PV = (logits if keep else logits[parents_P.to(device)]).float()
    if temperature != 1.0:
        z_PV = z_PV / temperature
    lse_P = torch.logsumexp(z_PV, dim=-1)
    parent_of_K = parent_of_K.to(device)
    picked_K = z_PV[parent_of_K, packed.input_ids_N[targets_K].to(device)]
    logp_K = picked_K - lse_P[parent_of_K]
    slot_N = torch.zeros(packed.num_tokens, dtype=torch.long)
    slot_N[targets_K] = torch.arange(len(targets_K))
    slot_BT = slot_N[packed.index_BT].to(device)
    wanted_BT = wanted_BT.to(device)
    logp_BT = torch.where(wanted_BT, logp_K[slot_BT], 0.0)
    if entropy == "none":
        return logp_BT, None
    with torch.set_grad_enabled(entropy == "grad" and torch.is_grad_enabled()):
        probs_PV = torch.softmax(z_PV, dim=-1)
        ent_P = lse_P - (probs_PV * z_PV).sum(dim=-1)
        ent_BT = torch.where(wanted_BT, ent_P[parent_of_K][slot_BT], 0.0)
    return logp_BT, ent_BT
