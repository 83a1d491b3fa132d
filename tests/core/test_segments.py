"""Turn segmentation: hand-worked cases and loop references on random masks."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from at2po.core.segments import TurnSegments, turn_index


def loop_turn_index(mask: list[list[int]]) -> list[list[int]]:
    """Reference: walk each row, open a new turn whenever a 1 follows a 0 or the row start."""
    out = []
    for row in mask:
        turn, prev, ids = -1, 0, []
        for m in row:
            if m and not prev:
                turn += 1
            ids.append(turn if m else -1)
            prev = m
        out.append(ids)
    return out


masks = st.integers(1, 6).flatmap(
    lambda b: st.integers(1, 12).flatmap(
        lambda t: st.lists(
            st.lists(st.integers(0, 1), min_size=t, max_size=t), min_size=b, max_size=b
        )
    )
)


def test_turn_index_hand_example():
    mask_BT = torch.tensor([[0, 1, 1, 0, 1, 0, 1, 1], [1, 1, 1, 1, 0, 0, 0, 0]])
    expected = [[-1, 0, 0, -1, 1, -1, 2, 2], [0, 0, 0, 0, -1, -1, -1, -1]]
    assert turn_index(mask_BT).tolist() == expected
    # float and bool masks segment the same way
    assert turn_index(mask_BT.float()).tolist() == expected
    assert turn_index(mask_BT.bool()).tolist() == expected


@settings(max_examples=200, deadline=None)
@given(masks)
def test_turn_index_matches_loop_reference(mask):
    assert turn_index(torch.tensor(mask)).tolist() == loop_turn_index(mask)


@settings(max_examples=100, deadline=None)
@given(masks, st.integers(0, 2**31 - 1))
def test_segment_reductions_match_loops(mask, seed):
    mask_BT = torch.tensor(mask)
    x_BT = torch.randn(mask_BT.shape, generator=torch.Generator().manual_seed(seed))
    seg = TurnSegments.from_mask(mask_BT)
    ids = loop_turn_index(mask)
    n_turns = [max(row) + 1 for row in ids]
    assert seg.max_turns == max(1, *n_turns)
    assert seg.num_turns_B.tolist() == n_turns
    sums_BK = seg.sum(x_BT)
    means_BK = seg.mean(x_BT)
    for b, row in enumerate(ids):
        for k in range(seg.max_turns):
            members = [t for t, turn in enumerate(row) if turn == k]
            expect_sum = float(sum(x_BT[b, t] for t in members))
            assert sums_BK[b, k].item() == pytest.approx(expect_sum, abs=1e-5)
            assert seg.lengths_BK[b, k].item() == len(members)
            expect_mean = expect_sum / len(members) if members else 0.0
            assert means_BK[b, k].item() == pytest.approx(expect_mean, abs=1e-5)
    back_BT = seg.broadcast(means_BK)
    for b, row in enumerate(ids):
        for t, turn in enumerate(row):
            expect = means_BK[b, turn].item() if turn >= 0 else 0.0
            assert back_BT[b, t].item() == expect


def test_explicit_turn_ids_group_runs_and_ignore_unmasked_tokens():
    # Row 0: two runs that share node id 3 (a call-limit warning split one node's generation) and
    # a run with id 5; the ids on the masked-out warning tokens are ignored.
    mask_BT = torch.tensor([[1, 1, 0, 1, 0, 1]])
    turn_BT = torch.tensor([[3, 3, 3, 3, -1, 5]])
    x_BT = torch.tensor([[1.0, 2.0, 100.0, 3.0, 100.0, 4.0]])
    seg = TurnSegments.from_mask(mask_BT, turn_BT)
    assert seg.turn_BT.tolist() == [[3, 3, -1, 3, -1, 5]]
    assert seg.max_turns == 6
    assert seg.num_turns_B.tolist() == [2]  # ids 0, 1, 2, 4 hold no token and do not count
    assert seg.mean(x_BT)[0, 3].item() == pytest.approx(2.0)  # (1 + 2 + 3) / 3
    assert seg.mean(x_BT)[0, 5].item() == pytest.approx(4.0)


def test_empty_mask_gives_one_empty_turn_slot():
    seg = TurnSegments.from_mask(torch.zeros(3, 5))
    assert seg.max_turns == 1
    assert seg.num_turns_B.tolist() == [0, 0, 0]
    assert seg.sum(torch.ones(3, 5)).tolist() == [[0.0], [0.0], [0.0]]


def test_sum_is_differentiable():
    x_BT = torch.tensor([[1.0, 2.0, 3.0]], requires_grad=True)
    seg = TurnSegments.from_mask(torch.tensor([[1, 0, 1]]))
    (seg.sum(x_BT) * torch.tensor([[10.0, 100.0]])).sum().backward()
    assert x_BT.grad.tolist() == [[10.0, 0.0, 100.0]]


@pytest.mark.parametrize(
    ("turn_BT", "message"),
    [
        (torch.tensor([[0, 0]]), "has shape"),
        (torch.tensor([[0.0, 0.0, 1.0]]), "integer"),
        (torch.tensor([[0, -1, 1]]), "negative on a token inside"),
    ],
)
def test_explicit_turn_ids_are_validated(turn_BT, message):
    with pytest.raises(ValueError, match=message):
        TurnSegments.from_mask(torch.tensor([[1, 1, 1]]), turn_BT)


def test_turn_index_rejects_non_matrix():
    with pytest.raises(ValueError, match="2-D"):
        turn_index(torch.ones(4))


@settings(max_examples=100, deadline=None)
@given(masks, st.data(), st.integers(0, 2**31 - 1))
def test_explicit_ids_match_loops(mask, data, seed):
    # Random ids per token, repeated across runs and with gaps; ids off the mask are noise.
    length = len(mask[0])
    raw = [data.draw(st.lists(st.integers(-1, 4), min_size=length, max_size=length)) for _ in mask]
    mask_BT, raw_BT = torch.tensor(mask), torch.tensor(raw)
    turn_BT = torch.where(mask_BT != 0, raw_BT.abs(), raw_BT)
    gen = torch.Generator().manual_seed(seed)
    x_BT = torch.randn(mask_BT.shape, generator=gen, dtype=torch.float64)
    seg = TurnSegments.from_mask(mask_BT, turn_BT)
    expected_turns = torch.where(mask_BT != 0, turn_BT, -1).tolist()
    trained = [[i for i in row if i >= 0] for row in expected_turns]
    assert seg.max_turns == max(1, *(max(row, default=-1) + 1 for row in trained))
    assert seg.num_turns_B.tolist() == [len(set(row)) for row in trained]
    assert seg.turn_BT.tolist() == expected_turns
    sums_BK = seg.sum(x_BT)
    for b, row in enumerate(expected_turns):
        for k in range(seg.max_turns):
            members = [t for t, turn in enumerate(row) if turn == k]
            assert seg.lengths_BK[b, k].item() == len(members)
            expect = sum(float(x_BT[b, t]) for t in members)
            assert sums_BK[b, k].item() == pytest.approx(expect, rel=1e-12, abs=1e-12)
    back_BT = seg.broadcast(sums_BK)
    for b, row in enumerate(expected_turns):
        for t, turn in enumerate(row):
            assert back_BT[b, t].item() == (sums_BK[b, turn].item() if turn >= 0 else 0.0)


@pytest.mark.parametrize("explicit_ids", [False, True])
def test_sum_drops_whatever_untrained_tokens_hold(explicit_ids):
    mask_BT = torch.tensor([[0, 1, 1, 0, 1, 0], [1, 0, 0, 0, 0, 0]])
    x_BT = torch.tensor(
        [[float("nan"), 1.0, 2.0, float("inf"), 4.0, -float("inf")], [5.0] + [float("nan")] * 5]
    )
    turn_BT = torch.tensor([[9, 0, 0, 9, 1, 9], [0, 9, 9, 9, 9, 9]]) if explicit_ids else None
    seg = TurnSegments.from_mask(mask_BT, turn_BT)
    assert seg.sum(x_BT).tolist() == [[3.0, 4.0], [5.0, 0.0]]
    assert int(seg.stretch_len_S.sum()) == mask_BT.numel()


def test_empty_batches_segment_to_empty_tensors():
    for shape in [(0, 5), (3, 0), (0, 0)]:
        seg = TurnSegments.from_mask(torch.zeros(shape))
        assert seg.max_turns == 1
        assert seg.sum(torch.zeros(shape)).shape == (shape[0], 1)
        assert seg.broadcast(torch.zeros(shape[0], 1)).shape == shape
        assert seg.turn_BT.shape == shape


def test_strided_inputs_segment_like_contiguous_ones():
    mask_TB = torch.tensor([[1, 0], [1, 1], [0, 1], [1, 1]])  # the mask below, transposed
    turn_TB = torch.tensor([[0, -1], [0, 0], [-1, 0], [1, 2]])
    x_BT = torch.arange(8.0).view(2, 4)
    strided = TurnSegments.from_mask(mask_TB.t(), turn_TB.t())
    dense = TurnSegments.from_mask(mask_TB.t().contiguous(), turn_TB.t().contiguous())
    assert strided.turn_BT.tolist() == dense.turn_BT.tolist() == [[0, 0, -1, 1], [-1, 0, 0, 2]]
    assert (
        strided.sum(x_BT).tolist()
        == dense.sum(x_BT).tolist()
        == [[1.0, 3.0, 0.0], [11.0, 0.0, 7.0]]
    )
