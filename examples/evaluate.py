"""Evaluate a LangChain chain that ends in the guarded model, through the library API.

The chain is a ChatPromptTemplate piped into GuardedChatModel. ``evaluate`` runs the
template, then ``GuardedChatModel.guard_messages``, which returns the plain and the
guarded response from one pass. Everything runs offline on the embedded SmolLM2-135M model
and the profanity scorer; expect a few minutes on two CPU cores.

    python examples/evaluate.py                      # 4 sample prompts
    python examples/evaluate.py --limit 6 --output runs/example.jsonl

Rerunning with the same --output skips the prompts already recorded.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from langchain_core.prompts import ChatPromptTemplate  # noqa: E402

from ttsa_guard import GuardedChatModel  # noqa: E402
from ttsa_guard.evaluation import evaluate, format_summary, load_prompts, plot, summarize  # noqa: E402

DATA = Path(__file__).resolve().parent / "data" / "rtp_sample.csv"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=4, help="Sample prompts to evaluate, 1 to 6. Default: 4.")
    parser.add_argument("--output", type=Path, default=Path("runs/example.jsonl"), help="JSONL records file.")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    template = ChatPromptTemplate.from_messages(
        [("system", "You are a helpful assistant."), ("user", "Continue this text: {text}")]
    )
    chain = template | GuardedChatModel(max_tokens=32)

    # The template adds the instruction, so the prompts are loaded as they are.
    prompts = load_prompts(DATA, id_column="id", limit=args.limit)
    records = evaluate(chain, prompts, output=args.output)

    for record in records:
        print(f"[{record.id}] {record.status}: score {record.plain_score:.3f} -> {_score(record.guarded_score)}")
        print(f"    guarded: {record.guarded_response!r}")

    print()
    print(format_summary(summarize(records, skipped_rows=len(prompts.skipped_rows))))
    paths = plot(records, args.output.with_suffix(""))
    print("\nPlots: " + ", ".join(str(path) for path in paths))


def _score(score: float | None) -> str:
    return "not scored" if score is None else f"{score:.3f}"


if __name__ == "__main__":
    main()
