"""The trees a run records for ``at2po view``: decoded turns, expansion scores, V and A per node.

The values are worked out by hand on one small tree::

    0 (root) ── 1 (H 1.0) ──┬── 3  reward 1
                            └── 4  reward 0
             └─ 2 (H 0.5)        reward 0

rows: leaves 3, 4, 2.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from at2po.core.tree import TurnTree
from at2po.rollout.rollouts import PromptGroup
from at2po.tasks.datasets import QAExample
from at2po.train.config import load_config
from at2po.train.run_dir import RunDir
from at2po.train.tree_record import tree_record

SEARCH = "<think>who</think> <search>Alpha</search>"
RESULT = "<result>Doc 1: Alpha is in Beta.</result>"
ANSWER = "<answer>Beta</answer>"


@pytest.fixture(scope="module")
def tokenizer(tiny_policy_dir: Path):
    return AutoTokenizer.from_pretrained(tiny_policy_dir)


def _group(tokenizer) -> PromptGroup:
    def ids(text: str) -> list[int]:
        return tokenizer.encode(text, add_special_tokens=False)

    tree = TurnTree([1, 2, 3])
    search = ids(SEARCH)
    tree.add_child(0, act_ids=search, act_logprobs=[-1.0] * len(search), finish="tool_call")
    answer = ids(ANSWER)
    tree.add_child(0, act_ids=answer, act_logprobs=[-0.5] * len(answer), finish="answer", reward=0)
    for reward in (1.0, 0.0):
        leaf = tree.add_child(
            1, obs_ids=ids(RESULT), act_ids=answer, act_logprobs=[-0.25] * len(answer)
        )
        leaf.finish, leaf.reward = "answer", reward
    tree.nodes[1].picks.append(0.95)
    example = QAExample("q1", "Where is Alpha?", ("Beta", "beta city"), "worlds")
    return PromptGroup(example, tree, (3, 4, 2))


def _config(estimator: str):
    return load_config(
        "at2po",
        [
            f"credit.estimator={estimator}",
            "credit.value_mode=leaf_mean",
            "credit.adv_mode=diff_parent",
            "credit.leaf_norm=none",
            "credit.grpo_scale_by_std=false",
            "rollout.sibling_penalty=0.05",
        ],
    )


def test_turns_carry_decoded_text_and_one_token_string_per_sampled_token(tokenizer):
    record = tree_record(7, [_group(tokenizer)], tokenizer, _config("tree"))
    turns = record["groups"][0]["turns"]
    assert record["step"] == 7 and record["sibling_penalty"] == 0.05
    assert [t["act"] for t in turns] == ["", SEARCH, ANSWER, ANSWER, ANSWER]
    assert [t["obs"] for t in turns] == ["", "", "", RESULT, RESULT]
    assert "".join(turns[1]["tokens"]) == SEARCH
    nodes = record["groups"][0]["tree"]["nodes"]
    assert all(len(t["tokens"]) == len(n["act_ids"]) for t, n in zip(turns, nodes, strict=True))
    assert nodes[1]["picks"] == [0.95] and nodes[3]["picks"] == []
    assert record["groups"][0]["example"]["golden_answers"] == ["Beta", "beta city"]


def test_expansion_scores_are_entropy_minus_alpha_times_siblings(tokenizer):
    turns = tree_record(1, [_group(tokenizer)], tokenizer, _config("tree"))["groups"][0]["turns"]
    # root: 0 − 0.05·(2 children − 1); node 1: 1.0 − 0.05·1 sibling; leaves are never candidates
    assert [t["score"] for t in turns] == [-0.05, 0.95, None, None, None]


def test_tree_estimator_values_and_advantages_by_hand(tokenizer):
    turns = tree_record(1, [_group(tokenizer)], tokenizer, _config("tree"))["groups"][0]["turns"]
    # leaf_mean: V(1) = mean(1, 0), V(root) = mean of its 3 leaves; diff_parent: A = V − V(parent)
    assert [t["value"] for t in turns] == [0.3333, 0.5, 0.0, 1.0, 0.0]
    assert [t["advantage"] for t in turns] == [0.3333, 0.1667, -0.3333, 0.5, -0.5]


def test_row_estimator_advantages_average_the_rows_through_each_node(tokenizer):
    turns = tree_record(1, [_group(tokenizer)], tokenizer, _config("grpo"))["groups"][0]["turns"]
    # GRPO without std scaling: reward − mean (1/3): rows 3, 4, 2 get 2/3, −1/3, −1/3;
    # node 1 carries rows 3 and 4: (2/3 − 1/3) / 2
    assert [t["value"] for t in turns] == [None] * 5
    assert [t["advantage"] for t in turns] == [0.0, 0.1667, -0.3333, 0.6667, -0.3333]


def test_run_dir_writes_the_record_as_json(tokenizer, tmp_path: Path):
    path = RunDir(tmp_path).write_trees(3, [_group(tokenizer)], tokenizer, _config("tree"))
    assert path == tmp_path / "trees" / "step_000003.json"
    record = json.loads(path.read_text(encoding="utf-8"))
    assert TurnTree.from_dict(record["groups"][0]["tree"]).nodes[1].picks == [0.95]
    assert record["groups"][0]["turns"][2]["act"] == ANSWER


def test_log_probs_are_kept_to_four_decimals(tokenizer):
    group = _group(tokenizer)
    group.tree.nodes[2].act_logprobs[0] = -0.123456789
    record = tree_record(1, [group], tokenizer, _config("tree"))
    assert record["groups"][0]["tree"]["nodes"][2]["act_logprobs"][0] == -0.1235
    assert group.tree.nodes[2].act_logprobs[0] == -0.123456789
