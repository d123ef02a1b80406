"""The ``ttsa-guard eval`` subcommand: its options and what it runs.

The command line module adds these options and the shared model flags to the ``eval``
parser, then calls :func:`run`.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ttsa_guard.errors import ConfigurationError, InvalidInputError
from ttsa_guard.evaluation.dataset import load_prompts
from ttsa_guard.evaluation.plots import plot
from ttsa_guard.evaluation.runner import evaluate
from ttsa_guard.evaluation.summary import format_summary, summarize

if TYPE_CHECKING:
    from ttsa_guard.chat_model import GuardedChatModel

__all__ = ["add_arguments", "run"]

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``ttsa-guard eval``; the model flags come from the command line module."""
    parser.add_argument("dataset", type=Path, help="Prompt file: .csv with a header row, or .jsonl with one object per line.")
    parser.add_argument("-o", "--output", type=Path, required=True, help="JSONL file of records; appended to and resumed.")
    parser.add_argument("--prompt-column", default="prompt", help="Column with the prompt text. Default: prompt.")
    parser.add_argument(
        "--id-column", help="Column with a unique id per row, used to resume. Default: the row number, from 1."
    )
    parser.add_argument(
        "--template",
        default="{prompt}",
        help="Format of the user message, with one {prompt} field, such as 'Continue this text: {prompt}'. "
        "Default: the prompt alone.",
    )
    parser.add_argument(
        "--where",
        action="append",
        default=[],
        metavar="COLUMN=VALUE",
        help="Keep only rows whose column equals the value, such as label=safe. Repeat to require several.",
    )
    parser.add_argument("--offset", type=int, default=0, help="Prompts to leave out at the start. Default: 0.")
    parser.add_argument("--limit", type=int, help="Maximum number of prompts, after --offset. Default: all.")
    parser.add_argument(
        "--sample", type=int, help="Draw this many prompts at random with --seed instead of --offset/--limit."
    )
    parser.add_argument("--format", dest="file_format", help="'csv' or 'jsonl'. Default: from the file extension.")
    parser.add_argument("--no-progress", action="store_true", help="Do not show the progress bar on stderr.")
    parser.add_argument("--no-plots", action="store_true", help="Do not write the PNG plots (they need matplotlib).")


def run(args: argparse.Namespace) -> int:
    """Evaluate a prompt set; write records, the summary JSON and the plots; print the summary."""
    # Imported here because the command line imports this module to build its parser.
    from ttsa_guard.cli import build_model, flag_threshold, load_guard

    if args.output.is_dir():
        msg = f"--output {str(args.output)!r} is a folder; pass a JSONL file path such as {str(args.output / 'eval.jsonl')!r}."
        raise InvalidInputError(msg)

    llm = build_model(args)
    prompts = load_prompts(
        args.dataset,
        prompt_column=args.prompt_column,
        id_column=args.id_column,
        template=args.template,
        where=_parse_where(args.where),
        offset=args.offset,
        limit=args.limit,
        sample=args.sample,
        seed=getattr(args, "seed", 0),
        file_format=args.file_format,
    )
    if not prompts.prompts:
        msg = f"No prompts selected from {args.dataset} ({prompts.total_rows} rows, {len(prompts.skipped_rows)} empty)."
        raise InvalidInputError(msg)

    prefix = args.output.with_suffix("") if args.output.suffix == ".jsonl" else args.output
    summary_path = prefix.with_name(prefix.name + ".summary.json")
    run_settings = _run_settings(args, llm, len(prompts))
    if args.output.exists():
        _check_resume_settings(summary_path, run_settings)

    load_guard(llm, args.model)
    records = evaluate(llm, prompts, output=args.output, progress=not args.no_progress)
    summary = summarize(records, skipped_rows=len(prompts.skipped_rows))
    summary_path.write_text(json.dumps({"summary": summary.model_dump(), "run": run_settings}, indent=2) + "\n")

    print(format_summary(summary))
    print(f"\nRecords: {args.output}\nSummary: {summary_path}")
    if args.no_plots:
        return 0

    try:
        paths = plot(records, prefix, threshold=flag_threshold(llm))
    except ConfigurationError as exc:  # matplotlib is missing; the records and summary are written
        print(f"ttsa-guard eval: plots skipped: {exc}", file=sys.stderr)
        return 0

    print("Plots: " + ", ".join(str(path) for path in paths))
    return 0


def _parse_where(conditions: Sequence[str]) -> dict[str, str]:
    where = {}
    for condition in conditions:
        column, separator, value = condition.partition("=")
        if not separator or not column:
            msg = f"--where {condition!r} is not COLUMN=VALUE, such as label=safe."
            raise ConfigurationError(msg)

        where[column] = value

    return where


# Settings that change the records, so a resumed run must use the same ones.
_RECORD_SETTINGS = ("template", "model", "scorer", "device", "dtype", "generation", "optimizer", "guard")


def _check_resume_settings(summary_path: Path, run_settings: dict[str, Any]) -> None:
    """Raise ConfigurationError when the records file was written with other settings."""
    try:
        previous = json.loads(summary_path.read_text(encoding="utf-8"))["run"]
    except (OSError, ValueError, KeyError, TypeError):
        logger.warning("cannot read %s, so the resumed run's settings are not compared", summary_path)
        return

    changed = [key for key in _RECORD_SETTINGS if key in previous and previous[key] != run_settings[key]]
    if changed:
        msg = (
            f"The records in {str(run_settings['output'])!r} were made with other settings ({', '.join(changed)} "
            f"differ, see {str(summary_path)!r}). Resume with the same settings, or pass a new --output."
        )
        raise ConfigurationError(msg)


def _run_settings(args: argparse.Namespace, llm: GuardedChatModel, prompts: int) -> dict[str, Any]:
    """Return what the summary file records about the run, to reproduce it."""
    return {
        "dataset": str(args.dataset),
        "output": str(args.output),
        "prompts": prompts,
        "prompt_column": args.prompt_column,
        "id_column": args.id_column,
        "template": args.template,
        "where": args.where,
        "offset": args.offset,
        "limit": args.limit,
        "sample": args.sample,
        "model": llm.model_name,
        "scorer": args.scorer,
        "device": llm.device,
        "dtype": llm.dtype,
        "generation": llm.generation.model_dump(),
        "optimizer": llm.optimizer.model_dump(),
        "guard": llm.guard.model_dump(),
    }
