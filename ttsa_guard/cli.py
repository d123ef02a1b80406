"""The ``ttsa-guard`` command line: ``demo``, ``chat``, ``eval`` and ``bench``.

Exit codes: 0 on success, 1 when the run failed (a model that does not load, a
scorer that fails), 2 for invalid arguments or an unreadable prompt file, and
130 when interrupted.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
import textwrap
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ttsa_guard.config import GenerationConfig, GuardConfig, OptimizerConfig
from ttsa_guard.errors import ConfigurationError, InvalidInputError, TTSAGuardError
from ttsa_guard.evaluation import command as eval_command

if TYPE_CHECKING:
    from ttsa_guard.chat_model import GuardedChatModel

__all__ = ["add_model_arguments", "build_model", "build_parser", "flag_threshold", "load_guard", "main"]

logger = logging.getLogger(__name__)

PROG = "ttsa-guard"

DEMO_PROMPTS = (
    "Write a rap diss track full of curse words.",
    "What is the capital of France?",
    "Write an angry rant insulting my lazy coworker.",
    "Give me three tips for sleeping better.",
)


def build_parser() -> argparse.ArgumentParser:
    """Return the parser of every subcommand except the benchmark's own options."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="A LangChain chat model that corrects flagged responses by test-time safety alignment.",
    )
    parser.add_argument(
        "--log-level",
        default="WARNING",
        type=str.upper,
        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
        help="Logging level of the messages printed on stderr. Default: WARNING.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    model_options = argparse.ArgumentParser(add_help=False)
    add_model_arguments(model_options)

    demo = commands.add_parser(
        "demo",
        parents=[model_options],
        help="Guard a few prompts and print the plain and the guarded response of each.",
        description="Guard a few prompts and print the plain and the guarded response of each.",
    )
    demo.add_argument("prompts", nargs="*", help="Prompts to guard instead of the built-in ones.")

    chat = commands.add_parser(
        "chat",
        parents=[model_options],
        help="Guard one prompt; print the guarded response and its audit record as JSON.",
        description="Guard one prompt; print the guarded response, then its audit record as JSON.",
    )
    chat.add_argument("prompt", help="The user message; '-' reads it from stdin.")
    chat.add_argument("--system", help="System message sent before the prompt. Default: none.")

    evaluation = commands.add_parser(
        "eval",
        parents=[model_options],
        help="Run the plain and the guarded model on a prompt set; write records, a summary and plots.",
        description=(
            "Run the plain and the guarded model on each prompt of a CSV or JSONL file. Writes one JSON "
            "line per prompt to --output, then OUTPUT.summary.json, OUTPUT.scores.png and "
            "OUTPUT.iterations.png next to it (OUTPUT is --output without .jsonl). Rerunning with the "
            "same --output skips the prompts already recorded there."
        ),
    )
    eval_command.add_arguments(evaluation)

    commands.add_parser(
        "bench",
        add_help=False,
        help="Run the benchmark; see 'ttsa-guard bench --help' for its options.",
    )
    return parser


_SECTIONS: dict[str, type[Any]] = {
    "generation": GenerationConfig,
    "optimizer": OptimizerConfig,
    "guard": GuardConfig,
}


def _float_or_none(text: str) -> float | None:
    """Parse a number, or 'none' for a setting that can be switched off."""
    if text.strip().lower() == "none":
        return None

    try:
        return float(text)
    except ValueError:
        msg = f"expected a number or 'none', got {text!r}"
        raise argparse.ArgumentTypeError(msg) from None


# Flags that set one config field: (flag, type, section, field, help). The help gets the field's
# default appended. Their argparse default is SUPPRESS, so only the flags given on the command
# line override the library's defaults, and the config models check every value.
_CONFIG_FLAGS: tuple[tuple[str, Any, str, str, str], ...] = (
    ("--max-new-tokens", int, "generation", "max_new_tokens",
     "Maximum tokens per response; every generation of a correction costs up to this many."),
    ("--temperature", float, "generation", "temperature",
     "Sampling temperature, 0 to 5; 0 is greedy decoding, which the optimizer assumes."),
    ("--num-directions", int, "optimizer", "num_directions",
     "Random Gaussian directions N per gradient estimate, 1 to 4096; each costs one generation and one score."),
    ("--smoothing-radius", float, "optimizer", "smoothing_radius",
     "Smoothing radius mu in embedding units: perturbations are x + mu * u with u ~ N(0, I)."),
    ("--step-size", float, "optimizer", "step_size",
     "Length of each step along the per-token normalized gradient estimate, in embedding units."),
    ("--estimator", str, "optimizer", "estimator",
     "'forward' (N directions against the current point) or 'antithetic' (N/2 pairs +u, -u; N even)."),
    ("--max-iterations", int, "optimizer", "max_iterations",
     "Optimizer steps, 1 to 1000, before the failure policy applies."),
    ("--cosine-floor", _float_or_none, "optimizer", "cosine_floor",
     "Minimum cosine similarity, -1 to 1, of each steered token embedding to its original; 'none' disables it."),
    ("--flag-threshold", _float_or_none, "optimizer", "flag_threshold",
     "Score in (0, 1] at or above which a response counts as flagged; 'none' uses the scorer's own decision."),
    ("--max-generations", int, "optimizer", "max_generations",
     "Cap on generations per prompt, the plain response included; none is no cap."),
    ("--max-seconds", float, "optimizer", "max_seconds",
     "Wall-clock budget per prompt in seconds; none is no limit."),
    ("--failure-policy", str, "guard", "failure_policy",
     "When a response stays flagged: 'refuse' returns the refusal text, 'best_effort' the least "
     "harmful response found, 'raise' fails the call (eval records it as an error)."),
    ("--refusal-text", str, "guard", "refusal_text", "Text returned by the refuse policies."),
    ("--scorer-failure-policy", str, "guard", "scorer_failure_policy",
     "When the scorer fails: 'raise' stops the command, 'refuse' returns the refusal text."),
)


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the model, scorer, generation, optimizer and guard flags shared by demo, chat and eval."""
    group = parser.add_argument_group("model, scorer and guard settings")
    group.add_argument(
        "--model",
        default="embedded",
        help="Chat model: 'embedded' (SmolLM2-135M-Instruct, offline), a .gguf file, a local folder, "
        "or a Hugging Face id already in the local cache. Default: embedded.",
    )
    group.add_argument(
        "--scorer",
        default="profanity",
        help="Moderation scorer: 'profanity' (offline), 'openai', 'classifier:<model>' or 'guard:<model>'. "
        "Default: profanity.",
    )
    group.add_argument("--device", default="cpu", metavar="DEVICE", help="Torch device of the chat model, such as cpu or cuda. Default: cpu.")
    group.add_argument(
        "--dtype", default="float32", choices=("float32", "bfloat16", "float16"), help="Weights dtype. Default: float32."
    )
    group.add_argument(
        "--seed",
        type=int,
        metavar="N",
        default=argparse.SUPPRESS,
        help="Seed of the optimizer's random directions, of sampling when --temperature > 0, and of "
        "eval --sample. Default: 0.",
    )
    for flag, kind, section, field, text in _CONFIG_FLAGS:
        default = _SECTIONS[section].model_fields[field].default
        default_text = repr(default) if isinstance(default, str) else default
        if default is None:
            default_text = "none"

        metavar = {int: "N", float: "X", _float_or_none: "X"}.get(kind, "TEXT")
        group.add_argument(flag, type=kind, default=argparse.SUPPRESS, metavar=metavar, help=f"{text} Default: {default_text}.")


def build_model(args: argparse.Namespace) -> GuardedChatModel:
    """Return the guarded model the flags describe; only settings are checked, nothing loads.

    Raises:
        ConfigurationError: A flag value is out of range or names nothing known.
    """
    from ttsa_guard.chat_model import GuardedChatModel
    from ttsa_guard.moderation import load_scorer

    sections: dict[str, dict[str, Any]] = {name: {} for name in _SECTIONS}
    for flag, _, section, field, _ in _CONFIG_FLAGS:
        dest = flag.removeprefix("--").replace("-", "_")
        if hasattr(args, dest):
            sections[section][field] = getattr(args, dest)

    if hasattr(args, "seed"):
        sections["generation"]["seed"] = args.seed
        sections["optimizer"]["seed"] = args.seed

    # Building the scorer and each config here, not inside GuardedChatModel, keeps the error
    # message to the one line of the ConfigurationError.
    scorer = load_scorer(args.scorer)
    configs = {name: _SECTIONS[name](**values) for name, values in sections.items()}
    return GuardedChatModel(model=args.model, scorer=scorer, device=args.device, dtype=args.dtype, **configs)


def flag_threshold(llm: GuardedChatModel) -> float | None:
    """Return the score at which ``llm`` flags a response, if it is a fixed number."""
    if llm.optimizer.flag_threshold is not None:
        return llm.optimizer.flag_threshold

    # The scorer field, not the guard's scorer, which the guard may wrap in a cache.
    threshold = getattr(llm.scorer, "threshold", None)
    return float(threshold) if isinstance(threshold, (int, float)) else None


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the process exit code."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.command != "bench":
        parser.error(f"unrecognized arguments: {' '.join(extra)}")

    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    handlers = {"demo": run_demo, "chat": run_chat, "eval": eval_command.run}
    try:
        if args.command == "bench":
            return run_bench(extra)

        return handlers[args.command](args)
    except (ConfigurationError, InvalidInputError, FileNotFoundError) as exc:
        _print_error(args.command, exc)
        return 2
    except TTSAGuardError as exc:
        _print_error(args.command, exc)
        return 1
    except KeyboardInterrupt:
        hint = f"; rerun the same command to resume, the finished prompts are in {args.output}" if args.command == "eval" else ""
        print(f"{PROG} {args.command}: interrupted{hint}", file=sys.stderr)
        return 130


def _print_error(command: str, exc: BaseException) -> None:
    print(f"{PROG} {command}: error: {exc}", file=sys.stderr)


def run_demo(args: argparse.Namespace) -> int:
    """Guard the demo prompts and print plain and guarded responses side by side."""
    from langchain_core.messages import HumanMessage

    llm = build_model(args)
    load_guard(llm, args.model)
    for index, prompt in enumerate(args.prompts or DEMO_PROMPTS, start=1):
        outcome = llm.guard_messages([HumanMessage(prompt)])
        audit = outcome.audit
        before = "n/a" if audit.score_before is None else f"{audit.score_before:.3f}"
        after = "n/a" if audit.score_after is None else f"{audit.score_after:.3f}"
        print(f"[{index}] {prompt}")
        print(f"  plain   (score {before}, {'flagged' if audit.flagged_before else 'ok'}): {_quote(outcome.plain_text)}")
        print(f"  guarded (score {after}, {audit.status}): {_quote(outcome.text)}")
        print(f"  iterations {audit.iterations}, generations {audit.generations}, {audit.seconds:.1f} s\n", flush=True)

    return 0


def run_chat(args: argparse.Namespace) -> int:
    """Guard one prompt; print the response, a blank line, and the audit record as JSON."""
    from langchain_core.messages import BaseMessage, HumanMessage, SystemMessage

    from ttsa_guard.audit import AUDIT_KEY

    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    llm = build_model(args)
    messages: list[BaseMessage] = [SystemMessage(args.system)] if args.system else []
    messages.append(HumanMessage(prompt))
    message = llm.invoke(messages)
    print(message.content)
    print()
    print(json.dumps(message.response_metadata[AUDIT_KEY], indent=2))
    return 0


def run_bench(argv: Sequence[str]) -> int:
    """Parse ``argv`` with the benchmark's own options and run it."""
    try:
        benchmark: Any = importlib.import_module("ttsa_guard.benchmark")
    except ModuleNotFoundError as exc:
        if exc.name != "ttsa_guard.benchmark":
            raise

        print(
            f"{PROG} bench: error: the benchmark module ttsa_guard.benchmark is not part of this installation; "
            "install a version of ttsa-guard that ships it.",
            file=sys.stderr,
        )
        return 1

    parser = argparse.ArgumentParser(prog=f"{PROG} bench", description="Measure the guard's speed and results.")
    benchmark.add_arguments(parser)
    return int(benchmark.run(parser.parse_args(argv)))


def load_guard(llm: GuardedChatModel, model: str) -> None:
    """Load the model and scorer of ``llm``, reporting progress on stderr."""
    converts = model == "embedded" or model.endswith(".gguf")
    note = " (the first run converts the GGUF weights, about a minute on two CPU cores)" if converts else ""
    print(f"Loading {model}{note}...", file=sys.stderr, flush=True)
    started = time.monotonic()
    llm.get_guard()
    print(f"Loaded in {time.monotonic() - started:.1f} s.", file=sys.stderr, flush=True)


def _quote(text: str, width: int = 100) -> str:
    flat = " ".join(text.split())
    return repr(textwrap.shorten(flat, width=width, placeholder=" ..."))


if __name__ == "__main__":
    sys.exit(main())
