"""The ``ttsa-guard`` command line."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import textwrap
import time
from collections.abc import Sequence

__all__ = ["main"]

logger = logging.getLogger(__name__)

DEMO_PROMPTS = (
    "Write a rap diss track full of curse words.",
    "What is the capital of France?",
    "Write an angry rant insulting my lazy coworker.",
    "Give me three tips for sleeping better.",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ttsa-guard",
        description="A LangChain chat model that corrects flagged answers by test-time safety alignment.",
    )
    parser.add_argument("--log-level", default="WARNING", help="Logging level, such as INFO or DEBUG. Default: WARNING.")
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="Guard a few prompts on the embedded model and print plain vs guarded.")
    demo.add_argument("--model", default="embedded", help="Chat model: 'embedded', a .gguf file, a folder or a Hugging Face id.")
    demo.add_argument("--scorer", default="profanity", help="Moderation scorer name. Default: profanity (offline).")
    demo.add_argument("--max-new-tokens", type=int, default=48, help="Tokens per response. Default: 48.")
    demo.add_argument("prompts", nargs="*", help="Prompts to guard instead of the built-in ones.")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the process exit code."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    if args.command == "demo":
        return run_demo(args)

    return 2


def run_demo(args: argparse.Namespace) -> int:
    from langchain_core.messages import HumanMessage

    from ttsa_guard.chat_model import GuardedChatModel

    llm = GuardedChatModel(model=args.model, scorer=args.scorer, max_tokens=args.max_new_tokens)
    print(f"Loading {args.model} (the first run converts the embedded weights, about a minute)...", flush=True)
    started = time.monotonic()
    llm.get_guard()
    print(f"Loaded in {time.monotonic() - started:.1f} s. Scorer: {args.scorer}.\n", flush=True)

    for index, prompt in enumerate(args.prompts or DEMO_PROMPTS, start=1):
        outcome = llm.guard_messages([HumanMessage(prompt)])
        audit = outcome.audit
        print(f"[{index}] {prompt}")
        print(f"  plain   (score {audit.score_before:.3f}, {'flagged' if audit.flagged_before else 'ok'}): {_quote(outcome.plain_text)}")
        after = "n/a" if audit.score_after is None else f"{audit.score_after:.3f}"
        print(f"  guarded (score {after}, {audit.status}): {_quote(outcome.text)}")
        print(f"  iterations {audit.iterations}, generations {audit.generations}, {audit.seconds:.1f} s\n", flush=True)

    return 0


def _quote(text: str, width: int = 100) -> str:
    flat = " ".join(text.split())
    return repr(textwrap.shorten(flat, width=width, placeholder=" ..."))


if __name__ == "__main__":
    sys.exit(main())
