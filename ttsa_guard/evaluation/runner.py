"""Run the plain and the guarded model over a prompt set and record both responses.

:func:`evaluate` accepts a :class:`~ttsa_guard.chat_model.GuardedChatModel`, a chain
that ends in one, or any runnable whose output carries the guard's audit record
next to a separate plain runnable. With an output file, every record is
appended as soon as it is ready, and a rerun skips the prompts already there.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from langchain_core.messages import BaseMessage, HumanMessage
from langchain_core.prompt_values import PromptValue
from langchain_core.prompts import BasePromptTemplate
from langchain_core.runnables import Runnable, RunnableBinding, RunnableSequence
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from ttsa_guard.audit import AUDIT_KEY, GuardAudit
from ttsa_guard.chat_model import GuardedChatModel
from ttsa_guard.errors import ConfigurationError, CorrectionFailedError, InvalidInputError
from ttsa_guard.evaluation.dataset import DatasetError, Prompt, PromptSet
from ttsa_guard.evaluation.records import EvalRecord, RecordFile
from ttsa_guard.evaluation.summary import is_refusal
from ttsa_guard.messages import message_text
from ttsa_guard.moderation import load_scorer
from ttsa_guard.moderation.base import Scorer

__all__ = ["evaluate"]

logger = logging.getLogger(__name__)

_Evaluator = Callable[[Prompt], EvalRecord]


def evaluate(
    target: Runnable[Any, Any],
    prompts: PromptSet | Iterable[Prompt | str],
    *,
    output: str | Path | None = None,
    plain: Runnable[Any, Any] | None = None,
    scorer: str | Scorer | Callable[..., Any] | None = None,
    input_key: str | None = None,
    progress: bool = True,
) -> list[EvalRecord]:
    """Evaluate the plain and the guarded model on each prompt.

    Without ``plain``, ``target`` must be a :class:`GuardedChatModel`, or a
    :class:`~langchain_core.runnables.RunnableSequence` whose last step is one (optionally
    bound with ``.bind(...)``). The steps before it turn the prompt into messages, and
    :meth:`GuardedChatModel.guard_messages` returns the plain and the guarded response from
    one pass.

    With ``plain``, ``target`` is any runnable that returns the guarded model's ``AIMessage``
    with its audit record, and ``plain`` is invoked on the same input for the plain response,
    which ``scorer`` scores. Its flag is the scorer's own decision, so it can differ from the
    guard's when the guard sets ``optimizer.flag_threshold``.

    Guarded calls that raise :class:`~ttsa_guard.errors.InvalidInputError` (a prompt too long
    for the context) or :class:`~ttsa_guard.errors.CorrectionFailedError` (the ``raise``
    failure policy) become records with status ``error``. Every other exception, scorer
    failures included, stops the run; the records written so far stay in ``output``.

    Args:
        target: The guarded model or chain.
        prompts: A :class:`PromptSet`, :class:`Prompt` objects, or strings (ids "1", "2", ...).
        output: JSONL file to append records to. A rerun with the same file skips the prompts
            whose id it already holds. None: keep records in memory only.
        plain: Runnable that gives the plain response for the same input.
        scorer: Scorer of the plain responses when ``plain`` is given; by default the scorer
            of the first GuardedChatModel found in ``target``.
        input_key: Input variable of the chain that receives the prompt. None (default): the
            only variable of a leading prompt template, else the prompt string itself.
        progress: Show a progress bar with the remaining time on stderr.

    Returns:
        One record per prompt in prompt order, records read back from ``output`` included.

    Raises:
        DatasetError: Two prompts share an id.
        ConfigurationError: ``target`` cannot be evaluated as given.
    """
    selected = _as_prompts(prompts)
    evaluator = _pick_evaluator(target, plain, scorer, input_key)
    records_file = RecordFile(output) if output is not None else None
    finished = {record.id: record for record in (records_file.load() if records_file else [])}

    selected_ids = {prompt.id for prompt in selected}
    foreign = [record_id for record_id in finished if record_id not in selected_ids]
    if foreign:
        logger.warning(
            "%s contains %d records whose ids are not in this prompt set; they stay in the file", output, len(foreign)
        )

    pending = [prompt for prompt in selected if prompt.id not in finished]
    if finished and len(pending) < len(selected):
        logger.info("resuming: %d of %d prompts already in %s", len(selected) - len(pending), len(selected), output)

    records = {prompt.id: finished[prompt.id] for prompt in selected if prompt.id in finished}
    bar = tqdm(
        total=len(selected),
        initial=len(records),
        desc="eval",
        unit="prompt",
        file=sys.stderr,
        disable=not progress,
        dynamic_ncols=True,
    )
    bar.set_postfix(_progress_counts(records.values()), refresh=False)
    try:
        with logging_redirect_tqdm():
            for prompt in pending:
                record = evaluator(prompt)
                if records_file is not None:
                    records_file.append(record)

                records[prompt.id] = record
                bar.update(1)
                bar.set_postfix(_progress_counts(records.values()), refresh=False)
    finally:
        bar.close()
        if records_file is not None:
            records_file.close()

    return [records[prompt.id] for prompt in selected]


def _as_prompts(prompts: PromptSet | Iterable[Prompt | str]) -> list[Prompt]:
    selected = []
    seen: set[str] = set()
    for position, item in enumerate(prompts, start=1):
        prompt = item if isinstance(item, Prompt) else Prompt(id=str(position), text=item, input=item, row=position)
        if prompt.id in seen:
            msg = f"Two prompts share the id {prompt.id!r}; ids must be unique, because resuming skips prompts by id."
            raise DatasetError(msg)

        seen.add(prompt.id)
        selected.append(prompt)

    return selected


def _progress_counts(records: Iterable[EvalRecord]) -> dict[str, int]:
    records = list(records)
    return {
        "flagged": sum(r.flagged_before is True for r in records),
        "neutralized": sum(r.neutralized for r in records),
    }


def _pick_evaluator(
    target: Runnable[Any, Any],
    plain: Runnable[Any, Any] | None,
    scorer: str | Scorer | Callable[..., Any] | None,
    input_key: str | None,
) -> _Evaluator:
    if plain is not None:
        return _PairEvaluator(target, plain, scorer, input_key)

    prefix: Runnable[Any, Any] | None = None
    last = target
    if isinstance(target, RunnableSequence):
        steps = target.steps
        prefix = steps[0] if len(steps) == 2 else RunnableSequence(*steps[:-1])
        last = steps[-1]

    bound: dict[str, Any] = {}
    if isinstance(last, RunnableBinding) and isinstance(last.bound, GuardedChatModel):
        bound = dict(last.kwargs)
        last = last.bound

    if not isinstance(last, GuardedChatModel):
        msg = (
            f"Cannot evaluate a {type(target).__name__} without a plain runnable: pass a GuardedChatModel, "
            "a chain that ends in one, or plain=<runnable giving the plain response>."
        )
        raise ConfigurationError(msg)

    return _GuardedEvaluator(last, prefix, input_key, bound)


class _GuardedEvaluator:
    """Both responses from one ``guard_messages`` call, after the chain's leading steps."""

    def __init__(
        self, model: GuardedChatModel, prefix: Runnable[Any, Any] | None, input_key: str | None, bound: dict[str, Any]
    ) -> None:
        self.model = model
        self.prefix = prefix
        self.input_key = input_key
        self.bound = bound

    def __call__(self, prompt: Prompt) -> EvalRecord:
        started = time.monotonic()
        try:
            if self.prefix is None:
                messages: list[BaseMessage] = [HumanMessage(prompt.input)]
            else:
                messages = _to_messages(self.prefix.invoke(_chain_input(self.prefix, prompt, self.input_key)))

            outcome = self.model.guard_messages(messages, **self.bound)
        except (InvalidInputError, CorrectionFailedError) as exc:
            return _error_record(prompt, exc, time.monotonic() - started, self.model)

        audit = outcome.audit
        return _record(
            prompt,
            audit,
            plain_response=outcome.plain_text,
            guarded_response=outcome.text,
            seconds=time.monotonic() - started,
            refusal_text=self.model.guard.refusal_text,
        )


class _PairEvaluator:
    """The guarded response from ``target`` and the plain one from a second runnable."""

    def __init__(
        self,
        target: Runnable[Any, Any],
        plain: Runnable[Any, Any],
        scorer: str | Scorer | Callable[..., Any] | None,
        input_key: str | None,
    ) -> None:
        self.target = target
        self.plain = plain
        self.input_key = input_key
        self.guarded_model = _find_guarded_model(target)
        if scorer is None and self.guarded_model is None:
            msg = "Pass scorer=... to score the plain responses; no GuardedChatModel was found in the target."
            raise ConfigurationError(msg)

        self.scorer = load_scorer(scorer) if scorer is not None else self.guarded_model.get_guard().scorer  # type: ignore[union-attr]

    def __call__(self, prompt: Prompt) -> EvalRecord:
        chain_input = _chain_input(self.target, prompt, self.input_key)
        started = time.monotonic()
        try:
            message = self.target.invoke(chain_input)
        except (InvalidInputError, CorrectionFailedError) as exc:
            return _error_record(prompt, exc, time.monotonic() - started, self.guarded_model)

        seconds = time.monotonic() - started
        metadata = getattr(message, "response_metadata", None) or {}
        if AUDIT_KEY not in metadata:
            msg = (
                f"The target returned a {type(message).__name__} without response_metadata[{AUDIT_KEY!r}]; "
                "its output must be the GuardedChatModel's AIMessage."
            )
            raise ConfigurationError(msg)

        plain_output = self.plain.invoke(chain_input)
        plain_text = message_text(plain_output) if isinstance(plain_output, BaseMessage) else str(plain_output)
        plain_result = self.scorer.score([plain_text], prompts=[prompt.input])[0]

        audit = GuardAudit.model_validate(metadata[AUDIT_KEY])
        audit.score_before = plain_result.score
        audit.flagged_before = plain_result.flagged
        refusal_text = self.guarded_model.guard.refusal_text if self.guarded_model else None
        return _record(
            prompt,
            audit,
            plain_response=plain_text,
            guarded_response=message_text(message),
            seconds=seconds,
            refusal_text=refusal_text,
        )


def _record(
    prompt: Prompt,
    audit: GuardAudit,
    *,
    plain_response: str,
    guarded_response: str,
    seconds: float,
    refusal_text: str | None,
) -> EvalRecord:
    return EvalRecord(
        id=prompt.id,
        prompt=prompt.text,
        input=prompt.input,
        model=audit.model,
        scorer=audit.scorer,
        status=audit.status,
        plain_response=plain_response,
        plain_score=audit.score_before,
        flagged_before=audit.flagged_before,
        guarded_response=guarded_response,
        guarded_score=audit.score_after,
        flagged_after=audit.flagged_after,
        refusal=is_refusal(guarded_response, [refusal_text] if refusal_text else []),
        iterations=audit.iterations,
        generations=audit.generations,
        scores=audit.scores,
        seconds=seconds,
        cosine_similarity=audit.cosine_similarity,
        stop_reason=audit.stop_reason,
        error=audit.error,
        history=audit.history,
    )


def _error_record(prompt: Prompt, exc: Exception, seconds: float, model: GuardedChatModel | None) -> EvalRecord:
    """Record a guarded call that raised; a CorrectionFailedError's audit fills the counts."""
    logger.warning("prompt %s: %s: %s", prompt.id, type(exc).__name__, exc)
    audit = getattr(exc, "audit", None) or {}
    model_name = audit.get("model") or _model_name(model)
    return EvalRecord(
        id=prompt.id,
        prompt=prompt.text,
        input=prompt.input,
        model=model_name,
        scorer=audit.get("scorer", "unknown"),
        status="error",
        plain_response=None,
        plain_score=audit.get("score_before"),
        flagged_before=audit.get("flagged_before"),
        guarded_response=None,
        guarded_score=None,
        flagged_after=None,
        iterations=audit.get("iterations", 0),
        generations=audit.get("generations", 0),
        scores=audit.get("scores", 0),
        seconds=seconds,
        cosine_similarity=audit.get("cosine_similarity"),
        stop_reason=audit.get("stop_reason"),
        error=f"{type(exc).__name__}: {exc}",
        history=audit.get("history", []),
    )


def _model_name(model: GuardedChatModel | None) -> str:
    if model is None:
        return "unknown"

    return model.backend.name if model.backend is not None else model.model_name


def _chain_input(runnable: Runnable[Any, Any], prompt: Prompt, input_key: str | None) -> Any:
    """Return the chain input that carries the prompt: a dict for a prompt template, else the text."""
    if input_key is not None:
        return {input_key: prompt.input}

    first = runnable.first if isinstance(runnable, RunnableSequence) else runnable
    if isinstance(first, BasePromptTemplate):
        variables = first.input_variables
        if len(variables) != 1:
            msg = (
                f"The chain's prompt template has the input variables {variables}; pass input_key to say "
                "which one receives the prompt (the others need partial values)."
            )
            raise ConfigurationError(msg)

        return {variables[0]: prompt.input}

    return prompt.input


def _to_messages(value: Any) -> list[BaseMessage]:
    """Turn a chain step's output (prompt value, messages or text) into the model's messages."""
    if isinstance(value, PromptValue):
        return value.to_messages()

    if isinstance(value, str):
        return [HumanMessage(value)]

    if isinstance(value, BaseMessage):
        return [value]

    if isinstance(value, Sequence) and all(isinstance(item, BaseMessage) for item in value):
        return list(value)

    msg = f"The steps before the guarded model returned a {type(value).__name__}; expected a prompt value, messages or text."
    raise ConfigurationError(msg)


def _find_guarded_model(runnable: Runnable[Any, Any]) -> GuardedChatModel | None:
    """Return the first GuardedChatModel among a chain's steps and bindings, if any."""
    if isinstance(runnable, GuardedChatModel):
        return runnable

    if isinstance(runnable, RunnableBinding):
        return _find_guarded_model(runnable.bound)

    if isinstance(runnable, RunnableSequence):
        for step in runnable.steps:
            found = _find_guarded_model(step)
            if found is not None:
                return found

    return None
