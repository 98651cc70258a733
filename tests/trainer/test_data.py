"""Data formats, validation with file:line, skipping bad records, digests, the length cut-off."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from loramux.trainer.data import check_lengths, load_data, split
from loramux.trainer.errors import DataError

CHAT = {"messages": [{"role": "system", "content": "Be brief."},
                     {"role": "user", "content": "Hi"},
                     {"role": "assistant", "content": "Hello!"}]}
PC = {"prompt": "2 + 2 =", "completion": " 4"}
ALPACA = {"instruction": "Add the numbers.", "input": "2 and 2", "output": "4"}


def _jsonl(path: Path, lines: list) -> Path:
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    return path


def test_chat_jsonl(tmp_path: Path) -> None:
    data = load_data(_jsonl(tmp_path / "t.jsonl", [CHAT, CHAT]))
    assert data.kind == "chat" and len(data.examples) == 2 and data.records_read == 2
    assert data.examples[0].to_row(None) == {"messages": CHAT["messages"]}
    assert data.examples[1].where == f"{tmp_path / 't.jsonl'}:2"
    assert data.digest.startswith("sha256:") and len(data.digest) == 71


def test_openai_text_parts_are_joined(tmp_path: Path) -> None:
    rec = {"messages": [{"role": "user", "content": [{"type": "text", "text": "a"},
                                                     {"type": "text", "text": "b"}]},
                        {"role": "assistant", "content": "c", "weight": 1}]}
    data = load_data(_jsonl(tmp_path / "t.jsonl", [rec]))
    assert data.examples[0].messages[0] == {"role": "user", "content": "ab"}


def test_prompt_completion_and_alpaca(tmp_path: Path) -> None:
    pc = load_data(_jsonl(tmp_path / "pc.jsonl", [PC]))
    assert pc.kind == "prompt_completion"
    assert pc.examples[0].to_row(None) == {
        "prompt": [{"role": "user", "content": "2 + 2 ="}],
        "completion": [{"role": "assistant", "content": " 4"}]}
    al = load_data(_jsonl(tmp_path / "al.jsonl", [ALPACA]),
                   prompt_template="### Instruction:\n{instruction}\n### Input:\n{input}\n"
                                   "### Response:\n")
    assert al.kind == "prompt_completion"
    assert al.examples[0].to_row("x") == {
        "prompt": "### Instruction:\nAdd the numbers.\n### Input:\n2 and 2\n### Response:\n",
        "completion": "4"}
    plain = load_data(_jsonl(tmp_path / "al2.jsonl", [ALPACA]))
    assert plain.examples[0].chat_view()[0]["content"] == "Add the numbers.\n\n2 and 2"


def test_csv_parquet_and_json_list(tmp_path: Path) -> None:
    with open(tmp_path / "t.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, ["instruction", "input", "output"])
        writer.writeheader()
        writer.writerow(ALPACA)
        writer.writerow({"instruction": "", "input": "", "output": "x"})
    with pytest.raises(DataError) as err:
        load_data(tmp_path / "t.csv")
    assert f"{tmp_path / 't.csv'}:3: empty instruction" in str(err.value)
    assert len(load_data(tmp_path / "t.csv", skip_bad=True).examples) == 1

    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist([{"messages": json.dumps(CHAT["messages"])}] * 3),
                   tmp_path / "t.parquet")
    assert load_data(tmp_path / "t.parquet").kind == "chat"
    (tmp_path / "t.json").write_text(json.dumps([PC, PC]))
    assert len(load_data(tmp_path / "t.json").examples) == 2


def test_every_problem_reported_with_line_numbers(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "bad.jsonl", [
        CHAT,
        "{not json",
        {"messages": []},
        {"messages": [{"role": "wizard", "content": "hi"}]},
        {"messages": [{"role": "user", "content": "hi"}]},
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": " "}]},
        PC,
        {"text": "what"},
        CHAT,
    ])
    with pytest.raises(DataError) as err:
        load_data(path)
    text = str(err.value)
    assert "7 of 9 records are invalid" in text
    for line, what in [(2, "bad JSON"), (3, "empty messages"), (4, "unknown role 'wizard'"),
                       (5, "no assistant turn"), (6, "empty content"),
                       (7, "a prompt_completion record in a chat file"),
                       (8, "not a chat record: no 'messages'")]:
        found = [row for row in text.splitlines() if f"bad.jsonl:{line}:" in row]
        assert found and what in found[0], (line, text)

    skipped = load_data(path, skip_bad=True)
    assert len(skipped.examples) == 2 and skipped.skipped_count == 7


def test_broken_json_line_is_reported_at_its_own_line_and_column(tmp_path: Path) -> None:
    """The newline is not part of the record: an unclosed one fails at its end, not "column 1"."""
    path = tmp_path / "b.jsonl"
    path.write_bytes((json.dumps(CHAT) + "\n" + '{"messages": [1, 2\n' + json.dumps(CHAT)
                      + "\r\n" + '{"a": 1,, "b": 2}\r\n').encode())
    with pytest.raises(DataError) as err:
        load_data(path)
    problems = err.value.problems
    assert problems == [f"{path}:2:19: bad JSON: Expecting ',' delimiter",
                        f"{path}:4:9: bad JSON: Expecting property name enclosed in double quotes"]


def test_file_level_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        load_data(tmp_path / "missing.jsonl")
    (tmp_path / "t.txt").write_text("x")
    with pytest.raises(DataError, match="unsupported file type"):
        load_data(tmp_path / "t.txt")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(DataError, match="no records"):
        load_data(tmp_path / "empty.jsonl")
    with pytest.raises(DataError, match=r"may use \{prompt\}; unknown: instruction"):
        load_data(_jsonl(tmp_path / "pc.jsonl", [PC]), prompt_template="{instruction}")
    with pytest.raises(DataError, match="not chat data"):
        load_data(_jsonl(tmp_path / "c.jsonl", [CHAT]), prompt_template="{prompt}")


def test_split_is_seeded(tmp_path: Path) -> None:
    data = load_data(_jsonl(tmp_path / "t.jsonl", [
        {"prompt": f"p{i}", "completion": f"c{i}"} for i in range(20)]))
    train, evals = split(data, 0.25, seed=1)
    assert len(train) == 15 and len(evals) == 5
    assert [e.prompt for e in split(data, 0.25, seed=1)[1]] == [e.prompt for e in evals]
    assert {e.prompt for e in train}.isdisjoint({e.prompt for e in evals})


def test_length_cut_off(tmp_path: Path, demo_base: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(demo_base)
    long = {"messages": [{"role": "user", "content": "red fox " * 200},
                         {"role": "assistant", "content": "ok"}]}
    data = load_data(_jsonl(tmp_path / "t.jsonl", [CHAT, long]))
    with pytest.raises(DataError) as err:
        check_lengths(data.examples, tokenizer, 64, None, skip_bad=False)
    assert "t.jsonl:2: " in str(err.value) and "longer than max_seq_length 64" in str(err.value)
    kept, problems, tokens = check_lengths(data.examples, tokenizer, 64, None, skip_bad=True)
    assert len(kept) == 1 and len(problems) == 1 and 0 < tokens <= 64
