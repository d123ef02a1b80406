"""The records file: one fsynced line per record, and resuming after an interrupted run."""

from __future__ import annotations

import json
import logging
import os

import pytest

from ttsa_guard import GuardedChatModel
from ttsa_guard.evaluation import EvalRecord, RecordFile, RecordFileError, evaluate

PROMPTS = ["Hi", "Tell me about rain.", "Why is the sky blue?", "Name a color.", "Count to three."]


class CountingScorer:
    """Passes every text and remembers which texts it scored; one call per unflagged prompt."""

    def __init__(self) -> None:
        self.texts: list[str] = []
        self.__name__ = "counting"

    def __call__(self, text: str) -> float:
        self.texts.append(text)
        return 0.0


def make_record(record_id: str) -> EvalRecord:
    return EvalRecord(
        id=record_id,
        prompt="p",
        input="p",
        model="m",
        scorer="s",
        status="passed",
        plain_response="r",
        plain_score=0.1,
        flagged_before=False,
        guarded_response="r",
        guarded_score=0.1,
        flagged_after=False,
    )


def read_lines(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_resume_after_torn_line(tiny_backend, tmp_path, caplog):
    output = tmp_path / "run.jsonl"
    evaluate(GuardedChatModel(backend=tiny_backend, max_tokens=12, scorer=CountingScorer()), PROMPTS, output=output, progress=False)
    complete = output.read_bytes()
    lines = complete.splitlines(keepends=True)

    # A run killed while writing its third record: two whole lines and half of the third.
    output.write_bytes(lines[0] + lines[1] + lines[2][: len(lines[2]) // 2])
    scorer = CountingScorer()
    with caplog.at_level(logging.WARNING, logger="ttsa_guard.evaluation.records"):
        records = evaluate(GuardedChatModel(backend=tiny_backend, max_tokens=12, scorer=scorer), PROMPTS, output=output, progress=False)

    assert "dropped a torn last line" in caplog.text
    assert len(scorer.texts) == 3, "only the torn prompt and the two never started should run"
    assert [r.id for r in records] == ["1", "2", "3", "4", "5"]
    written = read_lines(output)
    assert [r["id"] for r in written] == ["1", "2", "3", "4", "5"]
    assert output.read_bytes().startswith(lines[0] + lines[1])
    assert [r["guarded_response"] for r in written] == [json.loads(line)["guarded_response"] for line in lines]


def test_rerun_of_finished_file_runs_nothing(tiny_backend, tmp_path):
    output = tmp_path / "run.jsonl"
    first = evaluate(GuardedChatModel(backend=tiny_backend, max_tokens=12, scorer=CountingScorer()), PROMPTS[:3], output=output, progress=False)
    before = output.read_bytes()

    scorer = CountingScorer()
    again = evaluate(GuardedChatModel(backend=tiny_backend, max_tokens=12, scorer=scorer), PROMPTS[:3], output=output, progress=False)

    assert scorer.texts == []
    assert output.read_bytes() == before
    assert again == first


def test_interrupted_run_keeps_finished_records(tiny_backend, tmp_path):
    output = tmp_path / "run.jsonl"

    def interrupt_third(text: str) -> float:
        interrupt_third.calls += 1
        if interrupt_third.calls == 3:
            raise KeyboardInterrupt
        return 0.0

    interrupt_third.calls = 0
    with pytest.raises(KeyboardInterrupt):
        evaluate(GuardedChatModel(backend=tiny_backend, max_tokens=12, scorer=interrupt_third), PROMPTS, output=output, progress=False)

    assert [r["id"] for r in read_lines(output)] == ["1", "2"]

    records = evaluate(GuardedChatModel(backend=tiny_backend, max_tokens=12, scorer=CountingScorer()), PROMPTS, output=output, progress=False)

    assert [r["id"] for r in read_lines(output)] == ["1", "2", "3", "4", "5"]
    assert len(records) == 5


def test_each_record_is_fsynced(tmp_path, monkeypatch):
    synced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    path = tmp_path / "deep" / "run.jsonl"

    with RecordFile(path) as records:
        records.append(make_record("a"))
        after_first = len(synced)
        records.append(make_record("b"))

    # The first append also syncs the folder that received the new file.
    assert after_first == 2
    assert len(synced) == 3
    assert [r["id"] for r in read_lines(path)] == ["a", "b"]


def test_invalid_line_before_the_end_raises(tmp_path):
    path = tmp_path / "run.jsonl"
    good = make_record("a").model_dump_json()
    path.write_text(good + "\n{not json\n" + make_record("b").model_dump_json() + "\n", encoding="utf-8")

    with pytest.raises(RecordFileError, match="not valid, and complete records follow it"):
        RecordFile(path).load()

    assert path.read_text(encoding="utf-8").count("\n") == 3, "the file must not be changed"


def test_torn_line_of_null_bytes_is_dropped(tmp_path):
    path = tmp_path / "run.jsonl"
    good = make_record("a").model_dump_json() + "\n"
    path.write_bytes(good.encode() + b"\x00" * 64)

    assert [r.id for r in RecordFile(path).load()] == ["a"]
    assert path.read_bytes() == good.encode()


def test_last_record_without_newline_kept(tmp_path):
    path = tmp_path / "run.jsonl"
    path.write_text(make_record("a").model_dump_json(), encoding="utf-8")

    with RecordFile(path) as records:
        assert [r.id for r in records.load()] == ["a"]
        records.append(make_record("b"))

    assert [r["id"] for r in read_lines(path)] == ["a", "b"]


def test_duplicate_ids_in_file_keep_the_first(tmp_path, caplog):
    path = tmp_path / "run.jsonl"
    first = make_record("a")
    second = make_record("a").model_copy(update={"plain_response": "later"})
    path.write_text(first.model_dump_json() + "\n" + second.model_dump_json() + "\n", encoding="utf-8")

    with caplog.at_level(logging.WARNING, logger="ttsa_guard.evaluation.records"):
        records = RecordFile(path).load()

    assert [r.plain_response for r in records] == ["r"]
    assert "id 'a' appears more than once" in caplog.text


def test_foreign_records_stay_in_file(tiny_backend, tmp_path, caplog):
    output = tmp_path / "run.jsonl"
    output.write_text(make_record("other").model_dump_json() + "\n", encoding="utf-8")

    with caplog.at_level(logging.WARNING, logger="ttsa_guard.evaluation.runner"):
        records = evaluate(GuardedChatModel(backend=tiny_backend, max_tokens=12, scorer=CountingScorer()), PROMPTS[:2], output=output, progress=False)

    assert [r.id for r in records] == ["1", "2"]
    assert [r["id"] for r in read_lines(output)] == ["other", "1", "2"]
    assert "contains 1 records whose ids are not in this prompt set" in caplog.text
