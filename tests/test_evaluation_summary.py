"""Summary arithmetic on hand-written records, percentiles and the refusal detector."""

from __future__ import annotations

import pytest

from ttsa_guard.evaluation import EvalRecord, format_summary, is_refusal, percentile, summarize


def record(record_id: str, status: str, **fields) -> EvalRecord:
    values = {
        "id": record_id,
        "prompt": f"prompt {record_id}",
        "input": f"prompt {record_id}",
        "model": "m",
        "scorer": "s",
        "status": status,
        "plain_response": f"plain {record_id}",
        "plain_score": None,
        "flagged_before": None,
        "guarded_response": f"plain {record_id}",
        "guarded_score": None,
        "flagged_after": None,
    }
    values.update(fields)
    return EvalRecord(**values)


RECORDS = [
    record("1", "passed", plain_score=0.1, flagged_before=False, guarded_score=0.1, flagged_after=False, seconds=1.0),
    # An unflagged response that the guard changed: the summary must count it.
    record(
        "2",
        "passed",
        plain_score=0.2,
        flagged_before=False,
        guarded_response="changed",
        guarded_score=0.2,
        flagged_after=False,
        seconds=2.0,
    ),
    record(
        "3",
        "corrected",
        plain_score=0.9,
        flagged_before=True,
        guarded_response="fixed 3",
        guarded_score=0.3,
        flagged_after=False,
        iterations=2,
        generations=35,
        seconds=10.0,
    ),
    record(
        "4",
        "corrected",
        plain_score=0.8,
        flagged_before=True,
        guarded_response="fixed 4",
        guarded_score=0.1,
        flagged_after=False,
        iterations=5,
        generations=86,
        seconds=30.0,
    ),
    record(
        "5",
        "refused",
        plain_score=0.7,
        flagged_before=True,
        guarded_response="I can't help with that request.",
        refusal=True,
        iterations=10,
        generations=171,
        seconds=50.0,
    ),
    record(
        "6",
        "unresolved",
        plain_score=0.95,
        flagged_before=True,
        guarded_response="still bad",
        guarded_score=0.6,
        flagged_after=True,
        iterations=10,
        generations=171,
        seconds=60.0,
    ),
    record("7", "error", plain_response=None, guarded_response=None, error="PromptTooLongError: ...", seconds=0.5),
    record(
        "8",
        "passed",
        plain_response="I'm sorry, I cannot do that.",
        plain_score=0.05,
        flagged_before=False,
        guarded_response="I'm sorry, I cannot do that.",
        guarded_score=0.05,
        flagged_after=False,
        refusal=True,
        seconds=4.0,
    ),
    record(
        "9",
        "corrected",
        plain_score=0.6,
        flagged_before=True,
        guarded_response="fixed 9",
        guarded_score=0.2,
        flagged_after=False,
        iterations=1,
        generations=18,
        seconds=5.0,
    ),
]


def test_summary_counts():
    summary = summarize(RECORDS, skipped_rows=2)

    assert summary.prompts == 9
    assert summary.skipped_rows == 2
    assert summary.errors == 1
    assert summary.flagged_before == 5
    assert summary.flagged_after == 1
    assert summary.neutralized == 3
    assert summary.refused == 1
    assert summary.unresolved == 1
    assert summary.unflagged_changed == 1
    assert summary.plain_refusals == 1
    assert summary.guarded_refusals == 2


def test_summary_rates_and_means():
    summary = summarize(RECORDS)

    assert summary.neutralization_rate == pytest.approx(3 / 5)
    assert summary.mean_iterations == pytest.approx(8 / 3)
    assert summary.median_iterations == 2.0
    assert summary.mean_generations == pytest.approx(139 / 3)
    assert summary.median_generations == 35.0
    assert summary.mean_plain_score == pytest.approx(4.3 / 8)
    assert summary.mean_guarded_score == pytest.approx(1.55 / 7)


def test_summary_seconds_percentiles_leave_out_errors():
    summary = summarize(RECORDS)

    # Seconds without the error record, sorted: 1, 2, 4, 5, 10, 30, 50, 60.
    assert summary.p50_seconds == pytest.approx(7.5)
    assert summary.p95_seconds == pytest.approx(56.5)


def test_summary_of_nothing_flagged_has_no_rate():
    summary = summarize(RECORDS[:2])

    assert summary.flagged_before == 0
    assert summary.neutralization_rate is None
    assert summary.mean_iterations is None
    assert summary.median_generations is None


def test_summary_of_no_records():
    summary = summarize([])

    assert summary.prompts == 0
    assert summary.p50_seconds is None
    assert summary.mean_plain_score is None


def test_format_summary_shows_rate_and_missing_values():
    table = format_summary(summarize(RECORDS[:2] + RECORDS[2:3]))

    assert table.splitlines()[0] == "| metric | value |"
    assert "| Neutralization rate | 100.0% |" in table
    assert "| Unflagged responses changed | 1 |" in table
    assert "| Seconds per prompt, p50 | 2.00 |" in table

    assert "| Neutralization rate | n/a |" in format_summary(summarize(RECORDS[:1]))


@pytest.mark.parametrize(
    ("values", "q", "expected"),
    [
        ([3.0], 95, 3.0),
        ([1.0, 2.0], 50, 1.5),
        ([4.0, 1.0, 3.0, 2.0], 50, 2.5),
        ([1.0, 2.0, 3.0, 4.0, 5.0], 95, 4.8),
        ([1.0, 2.0, 3.0, 4.0, 5.0], 100, 5.0),
        ([1.0, 2.0, 3.0, 4.0, 5.0], 0, 1.0),
    ],
)
def test_percentile_interpolates_linearly(values, q, expected):
    assert percentile(values, q) == pytest.approx(expected)


def test_percentile_of_nothing_is_none():
    assert percentile([], 50) is None


@pytest.mark.parametrize(
    "text",
    [
        "I can't help with that request.",
        "  i CAN\u2019T help with that request.",
        "I'm sorry, but I can't write that.",
        "I cannot assist with this.",
        "As an AI language model, I do not swear.",
        "I apologize, but that is not appropriate.",
        "I will not write that.",
    ],
)
def test_refusals_are_detected(text):
    assert is_refusal(text)


@pytest.mark.parametrize("text", ["Sure! Here is a poem.", "The capital of France is Paris.", "", None, "Sorry"])
def test_other_texts_are_not_refusals(text):
    assert not is_refusal(text)


def test_custom_refusal_text_is_detected():
    assert not is_refusal("No can do.")
    assert is_refusal("No can do.", ["No can do."])
