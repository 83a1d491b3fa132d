"""Question files: Search-R1 / FlashRAG layouts in JSONL and Parquet, and errors naming the spot."""

import json
import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from at2po.tasks.datasets import DatasetError, QAExample, load_questions


def write_jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


ROWS = [
    {
        "id": "dev_0",
        "question": " Where was Lena Vardi born ",
        "golden_answers": ["Porto", "Oporto"],
        "data_source": "synthetic",
        "metadata": {"hops": 1},
    },
    {
        "id": "dev_1",
        "question": "Is Porto in Portugal?",
        "golden_answers": ["yes"],
        "data_source": "synthetic",
    },
]


def test_jsonl_round_trip(tmp_path):
    examples = load_questions(write_jsonl(tmp_path / "q.jsonl", ROWS))
    assert examples == [
        QAExample(
            "dev_0", "Where was Lena Vardi born?", ("Porto", "Oporto"), "synthetic", {"hops": 1}
        ),
        QAExample("dev_1", "Is Porto in Portugal?", ("yes",), "synthetic", {}),
    ]


def test_question_mark_is_optional(tmp_path):
    path = write_jsonl(tmp_path / "q.jsonl", ROWS)
    (example, _) = load_questions(path, ensure_question_mark=False)
    assert example.question == "Where was Lena Vardi born"


def test_flashrag_rows_without_source_take_the_folder_name(tmp_path):
    rows = [{"id": "test_0", "question": "Q?", "golden_answers": "1987", "metadata": None}]
    (example,) = load_questions(write_jsonl(tmp_path / "bamboogle" / "test.jsonl", rows))
    assert example.data_source == "bamboogle"
    assert (example.golden_answers, example.metadata) == (("1987",), {})
    (named,) = load_questions(write_jsonl(tmp_path / "popqa.jsonl", rows))
    assert named.data_source == "popqa"
    (given,) = load_questions(tmp_path / "popqa.jsonl", data_source="mine")
    assert given.data_source == "mine"


def test_missing_id_and_numeric_answers(tmp_path):
    rows = [
        {"question": "Q1?", "golden_answers": [1987, "in 1987"]},
        {"question": "Q2?", "golden_answers": ["x"], "id": 7},
    ]
    first, second = load_questions(write_jsonl(tmp_path / "years.jsonl", rows))
    assert (first.id, first.golden_answers) == ("years-1", ("1987", "in 1987"))
    assert second.id == "7"


def test_parquet_in_search_r1_layout(tmp_path):
    # Search-R1's data scripts keep question/golden_answers/id and add data_source, reward_model…
    table = pa.Table.from_pylist(
        [
            {
                "id": "train_0",
                "question": "Q0?",
                "golden_answers": ["a0"],
                "data_source": "nq",
                "reward_model": {"style": "rule", "ground_truth": {"target": ["a0"]}},
            },
            {
                "id": "train_1",
                "question": "Q1",
                "golden_answers": ["a1", "b1"],
                "data_source": "nq",
                "reward_model": {"style": "rule", "ground_truth": {"target": ["a1", "b1"]}},
            },
        ]
    )
    pq.write_table(table, tmp_path / "train.parquet")
    examples = load_questions(tmp_path / "train.parquet")
    assert [(e.id, e.question, e.golden_answers, e.data_source) for e in examples] == [
        ("train_0", "Q0?", ("a0",), "nq"),
        ("train_1", "Q1?", ("a1", "b1"), "nq"),
    ]


def test_parquet_answers_from_reward_model_target(tmp_path):
    table = pa.Table.from_pylist(
        [
            {
                "question": "Q?",
                "data_source": "hotpotqa",
                "reward_model": {"ground_truth": {"target": ["x", "y"]}},
            }
        ]
    )
    pq.write_table(table, tmp_path / "t.parquet")
    (example,) = load_questions(tmp_path / "t.parquet")
    assert example.golden_answers == ("x", "y")


def test_limit_stops_before_later_rows(tmp_path):
    path = write_jsonl(tmp_path / "q.jsonl", [*ROWS, "{not json"])
    assert [e.id for e in load_questions(path, limit=2)] == ["dev_0", "dev_1"]
    with pytest.raises(DatasetError, match="row 3"):
        load_questions(path)


def test_blank_lines_are_skipped_and_rows_are_line_numbers(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_text(json.dumps(ROWS[0]) + "\n\n" + json.dumps({"question": "Q?"}) + "\n")
    with pytest.raises(DatasetError, match=re.escape(f"{path}, row 3: field 'golden_answers'")):
        load_questions(path)


BROKEN = [
    ({"golden_answers": ["a"]}, "field 'question' must be a non-empty string, got no value"),
    ({"question": 5, "golden_answers": ["a"]}, "field 'question' must be a non-empty string"),
    ({"question": "Q?"}, "field 'golden_answers' is missing"),
    ({"question": "Q?", "golden_answers": []}, "field 'golden_answers' must be a non-empty list"),
    ({"question": "Q?", "golden_answers": {"a": 1}}, "field 'golden_answers' must be a non-empty"),
    ({"question": "Q?", "golden_answers": ["a", None]}, "field 'golden_answers[1]' must be a str"),
    ({"question": "Q?", "golden_answers": ["a", " "]}, "field 'golden_answers[1]' is an empty"),
    ({"question": "Q?", "golden_answers": ["a"], "id": 1.5}, "field 'id' must be a non-empty"),
    ({"question": "Q?", "golden_answers": ["a"], "data_source": 3}, "field 'data_source' must"),
    ({"question": "Q?", "golden_answers": ["a"], "metadata": [1]}, "field 'metadata' must be an"),
    ([1, 2], "expected an object, got list"),
    ("{bad json", "not valid JSON"),
]


@pytest.mark.parametrize(("row", "message"), BROKEN)
def test_broken_rows_name_file_row_and_field(tmp_path, row, message):
    path = write_jsonl(tmp_path / "broken.jsonl", [ROWS[0], row])
    with pytest.raises(DatasetError) as error:
        load_questions(path)
    assert str(error.value).startswith(f"{path}, row 2: ")
    assert message in str(error.value)


def test_duplicate_ids(tmp_path):
    path = write_jsonl(tmp_path / "q.jsonl", [ROWS[0], ROWS[1], ROWS[0]])
    with pytest.raises(DatasetError, match=r"row 3: field 'id': 'dev_0' already used by row 1"):
        load_questions(path)


def test_parquet_broken_row_names_the_row(tmp_path):
    table = pa.Table.from_pylist(
        [{"question": "Q?", "golden_answers": ["a"]}, {"question": "", "golden_answers": ["b"]}]
    )
    pq.write_table(table, tmp_path / "t.parquet")
    with pytest.raises(DatasetError, match=r"t\.parquet, row 2: field 'question'"):
        load_questions(tmp_path / "t.parquet")


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("empty.jsonl", "", "holds no questions"),
        ("blank.jsonl", "\n  \n", "holds no questions"),
        ("q.csv", "question,golden_answers\n", "unsupported file type '.csv'"),
        ("q.parquet", "not parquet", "not a readable Parquet file"),
    ],
)
def test_unusable_files(tmp_path, name, content, message):
    (tmp_path / name).write_text(content)
    with pytest.raises(DatasetError, match=re.escape(message)) as error:
        load_questions(tmp_path / name)
    assert str(tmp_path / name) in str(error.value)


def test_missing_file_and_bad_limit(tmp_path):
    with pytest.raises(DatasetError, match="no such file"):
        load_questions(tmp_path / "absent.jsonl")
    path = write_jsonl(tmp_path / "q.jsonl", ROWS)
    with pytest.raises(DatasetError, match="limit must be at least 1"):
        load_questions(path, limit=0)


def test_example_validates_direct_construction():
    with pytest.raises(TypeError, match="tuple"):
        QAExample("x", "Q?", ["a"], "s")
    with pytest.raises(ValueError, match="question is empty"):
        QAExample("x", " ", ("a",), "s")
    with pytest.raises(ValueError, match="non-empty string"):
        QAExample("x", "Q?", ("",), "s")
    assert hash(QAExample("x", "Q?", ("a",), "s", {"plan": [1]}))  # metadata is not hashed
