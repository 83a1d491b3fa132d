"""Training rows: one right-padded token row per (tree, leaf), with per-token masks and advantages.

Row b is the path root → leaf of one sampled leaf: ``[prompt][turn 1: obs, act][turn 2: obs, act]…``
then padding. Only the sampled (act) tokens are trained on: ``loss_mask`` is 1 exactly there, and
those tokens carry their behaviour log-prob, their turn's index on the path (0 = first turn) and
their turn's advantage. Prompt, observation and padding tokens get loss mask 0, log-prob 0,
turn −1 and advantage 0.

Tokens forced by T²PO's thinking intervention (``Node.act_forced``) get loss mask 0 by default:
they were not sampled from the policy, so no ratio of theirs is exact. ``train_forced_tokens``
keeps them in the loss, as the T²PO authors' code does (their turn index and advantage are set
either way).

Truncation: with ``max_len`` every row is padded to exactly ``max_len`` tokens, and a row longer
than that keeps its first ``max_len`` tokens (the prompt must fit; the response loses its tail,
possibly mid-turn — the kept part of a cut turn keeps that turn's index and advantage).
"""

from __future__ import annotations

from array import array
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from at2po.core.tree import TurnTree


@dataclass(frozen=True)
class Rows:
    """A padded batch of B training rows of T tokens.

    Attributes:
        input_ids_BT: prompt + response ids, right-padded with the pad id (long).
        attention_mask_BT: 1 on prompt and response tokens, 0 on padding (long).
        loss_mask_BT: 1.0 on sampled tokens (and forced ones if asked), 0.0 elsewhere (float32).
        old_logp_BT: behaviour log-prob of sampled tokens, 0 elsewhere (float32).
        adv_BT: advantage of sampled tokens, 0 elsewhere (float32).
        turn_BT: index on the path of the turn a sampled token belongs to, −1 elsewhere (long).
        tree_id_B: index of the row's tree in the input (long).
        prompt_len_B: number of prompt tokens; the response starts there (long).
        node_paths: node ids of the row's turns, first turn first (root excluded), so turn j of
            row b is node ``node_paths[b][j]`` of tree ``tree_id_B[b]``.
    """

    input_ids_BT: torch.Tensor
    attention_mask_BT: torch.Tensor
    loss_mask_BT: torch.Tensor
    old_logp_BT: torch.Tensor
    adv_BT: torch.Tensor
    turn_BT: torch.Tensor
    tree_id_B: torch.Tensor
    prompt_len_B: torch.Tensor
    node_paths: list[list[int]]


def build_rows(
    trees: Sequence[TurnTree],
    leaf_rows: Sequence[Sequence[int]],
    advantages: torch.Tensor,
    pad_id: int,
    max_len: int | None = None,
    train_forced_tokens: bool = False,
) -> Rows:
    """Lay out the rows of ``trees`` (``leaf_rows[f]``: the leaf of each row of tree ``f``).

    ``advantages`` is either per row and turn, shape (B, J) with ``[b, j]`` the advantage of turn j
    of row b (:attr:`at2po.core.credit.TreeCredit.adv_BJ`), or per row, shape (B,), the same value
    on every sampled token of the row (GRPO-style baselines). Rows are listed tree by tree.
    """
    if len(trees) != len(leaf_rows):
        raise ValueError(
            f"{len(trees)} trees but leaf rows for {len(leaf_rows)}; give one list per tree"
        )
    store = _TokenStore()
    seg_start: list[int] = []
    seg_len: list[int] = []
    row_len: list[int] = []
    prompt_len: list[int] = []
    tree_id: list[int] = []
    node_paths: list[list[int]] = []
    for f, (tree, leaves) in enumerate(zip(trees, leaf_rows, strict=True)):
        starts, lengths = store.add_tree(tree)
        for leaf in leaves:
            if not (0 <= leaf < len(tree) and tree.is_leaf(leaf)):
                raise ValueError(f"tree {f}: row leaf {leaf} is not a leaf of the tree")
            path = tree.path(leaf)
            seg_start += [starts[n] for n in path]
            segments = [lengths[n] for n in path]
            seg_len += segments
            row_len.append(sum(segments))
            prompt_len.append(lengths[0])
            tree_id.append(f)
            node_paths.append(path[1:])

    n_rows = len(row_len)
    if n_rows == 0:
        raise ValueError("no rows to build: every tree needs at least one leaf row")
    _check_advantages(advantages, n_rows, max(map(len, node_paths)))
    row_len_B = torch.tensor(row_len, dtype=torch.long)
    prompt_len_B = torch.tensor(prompt_len, dtype=torch.long)
    if max_len is not None and bool((prompt_len_B > max_len).any()):
        raise ValueError(
            f"a prompt has {int(prompt_len_B.max())} tokens but max_len={max_len}; "
            "raise max_len or shorten the prompt (prompts are never truncated)"
        )
    width = max_len if max_len is not None else int(row_len_B.max())

    # token k of the batch (rows back to back) comes from store position src[k]
    n_tokens = int(row_len_B.sum())
    seg_start_K = torch.tensor(seg_start, dtype=torch.long)
    seg_len_K = torch.tensor(seg_len, dtype=torch.long)
    src = torch.arange(n_tokens) + torch.repeat_interleave(
        seg_start_K - (torch.cumsum(seg_len_K, 0) - seg_len_K), seg_len_K
    )
    kept_len_B = row_len_B.clamp(max=width)
    if bool((kept_len_B < row_len_B).any()):
        pos = torch.arange(n_tokens) - torch.repeat_interleave(
            torch.cumsum(row_len_B, 0) - row_len_B, row_len_B
        )
        src = src[pos < width]
    # masked_scatter fills the True positions row by row, in the order of src
    in_row_BT = torch.arange(width)[None, :] < kept_len_B[:, None]
    ids_S, logp_S, turn_S = store.tensors()
    trained_S = turn_S >= 0
    if not train_forced_tokens and store.forced:
        trained_S[torch.tensor(store.forced, dtype=torch.long)] = False
    input_ids_BT = torch.full((n_rows, width), pad_id, dtype=torch.long)
    input_ids_BT.masked_scatter_(in_row_BT, ids_S[src])
    attention_mask_BT = in_row_BT.long()
    turn_BT = torch.full((n_rows, width), -1, dtype=torch.long)
    turn_BT.masked_scatter_(in_row_BT, turn_S[src])
    old_logp_BT = torch.zeros((n_rows, width), dtype=torch.float32)
    old_logp_BT.masked_scatter_(in_row_BT, logp_S[src])
    trained_BT = torch.zeros((n_rows, width), dtype=torch.bool)
    trained_BT.masked_scatter_(in_row_BT, trained_S[src])
    loss_mask_BT = trained_BT.to(torch.float32)
    if advantages.dim() == 2:
        adv_BT = scatter_turn_advantages(advantages, turn_BT)
    else:
        adv_BT = broadcast_row_advantages(advantages, loss_mask_BT)
    return Rows(
        input_ids_BT=input_ids_BT,
        attention_mask_BT=attention_mask_BT,
        loss_mask_BT=loss_mask_BT,
        old_logp_BT=old_logp_BT,
        adv_BT=adv_BT,
        turn_BT=turn_BT,
        tree_id_B=torch.tensor(tree_id, dtype=torch.long),
        prompt_len_B=prompt_len_B,
        node_paths=node_paths,
    )


class _TokenStore:
    """Every node's tokens once, back to back, so rows sharing a prefix copy it by index.

    A tree contributes its prompt (as node 0) and then, per node, ``obs_ids + act_ids``; each
    token also records its behaviour log-prob (0 off-policy) and its turn on any path through
    the node (depth − 1 on act tokens, −1 elsewhere).
    """

    def __init__(self) -> None:
        self.ids: list[int] = []
        self.logps: list[float] = []
        self.piece_len: list[int] = []
        self.piece_turn: list[int] = []
        self.forced: list[int] = []

    def add_tree(self, tree: TurnTree) -> tuple[list[int], list[int]]:
        """Store ``tree``; return each node's start in the store and its token count."""
        starts = [len(self.ids)]
        self.ids += tree.prompt_ids
        self.logps += [0.0] * len(tree.prompt_ids)
        self.piece_len.append(len(tree.prompt_ids))
        self.piece_turn.append(-1)
        depth = [0] * len(tree)
        for node in tree.nodes[1:]:
            depth[node.id] = depth[node.parent] + 1  # type: ignore[index]
            starts.append(len(self.ids))
            self.ids += node.obs_ids
            self.forced += [len(self.ids) + i for i in node.forced_positions()]
            self.ids += node.act_ids
            self.logps += [0.0] * len(node.obs_ids)
            self.logps += node.act_logprobs
            self.piece_len += [len(node.obs_ids), len(node.act_ids)]
            self.piece_turn += [-1, depth[node.id] - 1]
        ends = [*starts[1:], len(self.ids)]
        lengths = [end - start for start, end in zip(starts, ends, strict=True)]
        return starts, lengths

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(ids, log-probs, turns) of every stored token.

        The lists go through ``array`` (one C-level conversion) and are shared with torch;
        ``torch.tensor`` on a list of millions of ints is several times slower.
        """
        turn_S = torch.repeat_interleave(
            torch.tensor(self.piece_turn, dtype=torch.long),
            torch.tensor(self.piece_len, dtype=torch.long),
        )
        if not self.ids:
            return torch.zeros(0, dtype=torch.long), torch.zeros(0), turn_S
        ids_S = torch.frombuffer(array("q", self.ids), dtype=torch.long)
        logp_S = torch.frombuffer(array("f", self.logps), dtype=torch.float32)
        return ids_S, logp_S, turn_S


def _check_advantages(advantages: torch.Tensor, n_rows: int, n_turns: int) -> None:
    if advantages.dim() not in (1, 2) or advantages.shape[0] != n_rows:
        raise ValueError(
            f"advantages of shape {tuple(advantages.shape)} do not fit {n_rows} rows; give "
            "(B,) per row or (B, J) per row and turn"
        )
    if advantages.dim() == 2 and advantages.shape[1] < n_turns:
        raise ValueError(
            f"advantages cover {advantages.shape[1]} turns but a row has {n_turns}; "
            "compute them from the same trees and rows (TreeCredit.adv_BJ)"
        )


def scatter_turn_advantages(adv_BJ: torch.Tensor, turn_BT: torch.Tensor) -> torch.Tensor:
    """``adv_BT[b, t] = adv_BJ[b, turn_BT[b, t]]`` where ``turn_BT ≥ 0``, else 0 (float32)."""
    gathered = adv_BJ.to(torch.float32).gather(1, turn_BT.clamp(min=0))
    return torch.where(turn_BT >= 0, gathered, 0.0)


def broadcast_row_advantages(adv_B: torch.Tensor, loss_mask_BT: torch.Tensor) -> torch.Tensor:
    """One advantage per row spread over its sampled tokens: ``adv_B[b] · loss_mask_BT[b, t]``."""
    return adv_B.to(torch.float32)[:, None] * loss_mask_BT.to(torch.float32)
