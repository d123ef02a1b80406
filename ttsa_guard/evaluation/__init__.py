"""Evaluation of the guard on prompt sets: load prompts, run, summarize and plot.

Example:
    .. code-block:: python

        from ttsa_guard import GuardedChatModel
        from ttsa_guard.evaluation import evaluate, load_prompts, plot, summarize

        prompts = load_prompts("rtp.csv", template="Continue this text: {prompt}", limit=30)
        records = evaluate(GuardedChatModel(), prompts, output="runs/rtp.jsonl")
        print(summarize(records, skipped_rows=len(prompts.skipped_rows)))
        plot(records, "runs/rtp")

The command line runs the same steps: ``ttsa-guard eval rtp.csv --output runs/rtp.jsonl``.
"""

from __future__ import annotations

from ttsa_guard.evaluation.dataset import DEFAULT_TEMPLATE, DatasetError, Prompt, PromptSet, check_template, load_prompts
from ttsa_guard.evaluation.plots import plot, plot_iterations, plot_scores
from ttsa_guard.evaluation.records import EvalRecord, RecordFile, RecordFileError, RecordStatus
from ttsa_guard.evaluation.runner import evaluate
from ttsa_guard.evaluation.summary import (
    REFUSAL_OPENINGS,
    EvalSummary,
    format_summary,
    is_refusal,
    percentile,
    summarize,
)

__all__ = [
    "DEFAULT_TEMPLATE",
    "DatasetError",
    "EvalRecord",
    "EvalSummary",
    "Prompt",
    "PromptSet",
    "REFUSAL_OPENINGS",
    "RecordFile",
    "RecordFileError",
    "RecordStatus",
    "check_template",
    "evaluate",
    "format_summary",
    "is_refusal",
    "load_prompts",
    "percentile",
    "plot",
    "plot_iterations",
    "plot_scores",
    "summarize",
]
