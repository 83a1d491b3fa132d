"""Copy accuracy: span location checked by hand, and the metric against oracle models."""

from __future__ import annotations

import torch

from at2po.models.copying import copy_accuracy, copy_spans


class _Oracle(torch.nn.Module):
    """Predicts each row's true next token (an exact copier), or always token ``fixed``."""

    def __init__(self, vocab: int, fixed: int | None = None) -> None:
        super().__init__()
        self.vocab = vocab
        self.fixed = fixed
        self.weight = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, attention_mask):
        nxt = (
            torch.roll(input_ids, -1, dims=1)
            if self.fixed is None
            else torch.full_like(input_ids, self.fixed)
        )
        logits = torch.nn.functional.one_hot(nxt, self.vocab).float()
        return type("Out", (), {"logits": logits})()


def test_spans_are_the_first_query_and_the_final_answer(codec, episodes):
    answered = [s for s in episodes if s.finish == "answer" and s.tool_calls >= 1]
    assert answered
    for state in answered:
        spans = copy_spans(codec, state)
        ids = spans.row.input_ids
        first_search = next(t for t in state.turns if t.action.kind == "search")
        query_ids = ids[spans.query[0] : spans.query[1]]
        answer_ids = ids[spans.answer[0] : spans.answer[1]]
        assert codec.decode(query_ids) == first_search.action.content
        assert codec.decode(answer_ids) == state.turns[-1].action.content
        assert all(spans.row.loss_mask[i] for i in range(*spans.query))
        assert all(spans.row.loss_mask[i] for i in range(*spans.answer))


def test_an_exact_copier_scores_one_and_a_constant_scores_zero(codec, episodes):
    answered = [s for s in episodes if s.finish == "answer" and s.tool_calls >= 1]
    vocab = len(codec.tokenizer)
    perfect = copy_accuracy(_Oracle(vocab), codec, answered, batch_size=4)
    assert perfect["query"] == perfect["answer"] == 1.0
    assert perfect["n_query"] == perfect["n_answer"] == len(answered)
    constant = copy_accuracy(_Oracle(vocab, fixed=5), codec, answered)
    assert constant["query"] == constant["answer"] == 0.0
