"""A runnable that moderates any text in a chain, such as a tool's output before the agent reads it.

The guarded chat model corrects its own responses; text from elsewhere (tool results,
retrieved documents, another model's response) cannot be corrected that way, so
:class:`ModerationRunnable` scores it and applies a policy:

* ``"replace"`` (default): a flagged text becomes ``notice``;
* ``"annotate"``: every text passes through unchanged, and messages carry the verdict in
  ``response_metadata["ttsa_guard_moderation"]``;
* ``"raise"``: a flagged text raises :class:`FlaggedContentError`.

Under every policy the verdicts are sent as the custom callback event
``"ttsa_guard.moderation"`` (scores only, never text), and messages are annotated.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any, Literal, TypeVar, get_args

from langchain_core.callbacks import (
    AsyncCallbackManagerForChainRun,
    CallbackManagerForChainRun,
    adispatch_custom_event,
    dispatch_custom_event,
)
from langchain_core.messages import AIMessage, BaseMessage, ToolMessage
from langchain_core.runnables import Runnable, RunnableConfig

from ttsa_guard.errors import ConfigurationError, FlaggedContentError
from ttsa_guard.moderation import load_scorer
from ttsa_guard.moderation.base import ModerationResult, Scorer, validate_threshold

__all__ = ["MODERATION_EVENT", "MODERATION_KEY", "FlaggedContentError", "ModerationPolicy", "ModerationRunnable"]

logger = logging.getLogger(__name__)

ModerationPolicy = Literal["replace", "annotate", "raise"]
Moderated = TypeVar("Moderated", str, BaseMessage, list[BaseMessage])

MODERATION_EVENT = "ttsa_guard.moderation"
"""Name of the custom callback event that carries the verdicts of one moderation run."""

MODERATION_KEY = "ttsa_guard_moderation"
"""Key of a message's verdict in its ``response_metadata``."""

DEFAULT_NOTICE = "[Content removed by moderation.]"


class ModerationRunnable(Runnable[Any, Any]):
    """Scores a str, a message or a list of messages, and applies a moderation policy.

    The output has the input's type. For an AIMessage the scorer also judges the decoded
    tool-call arguments, and ``"replace"`` removes the tool calls with the text. A ToolMessage
    keeps its ``tool_call_id``, ``name``, ``status`` and ``artifact``; only its content is judged
    and replaced.

    Args:
        scorer: A scorer name, a :class:`~ttsa_guard.moderation.base.Scorer`, or a function from
            text to a score in [0, 1]; see :func:`~ttsa_guard.moderation.load_scorer`.
        policy: ``"replace"`` (default), ``"annotate"`` or ``"raise"``; see the module docstring.
        notice: Text that replaces flagged content under ``"replace"``.
        threshold: Score at or above which a text counts as flagged, in (0, 1]. None (default)
            uses the scorer's own decision.
    """

    def __init__(
        self,
        scorer: Any = "profanity",
        *,
        policy: ModerationPolicy = "replace",
        notice: str = DEFAULT_NOTICE,
        threshold: float | None = None,
    ) -> None:
        if policy not in get_args(ModerationPolicy):
            msg = f"policy must be one of {', '.join(map(repr, get_args(ModerationPolicy)))}, got {policy!r}."
            raise ConfigurationError(msg)

        self.scorer: Scorer = load_scorer(scorer)
        self.policy = policy
        self.notice = notice
        self.threshold = validate_threshold(threshold) if threshold is not None else None

    def invoke(self, input: Moderated, config: RunnableConfig | None = None, **kwargs: Any) -> Moderated:  # noqa: A002
        """Moderate ``input`` and return it, annotated or replaced by the policy."""
        return self._call_with_config(self._moderate, input, config, run_type="chain")

    async def ainvoke(self, input: Moderated, config: RunnableConfig | None = None, **kwargs: Any) -> Moderated:  # noqa: A002
        """Moderate ``input`` without blocking the event loop."""
        return await self._acall_with_config(self._amoderate, input, config, run_type="chain")

    def _moderate(self, value: Moderated, run_manager: CallbackManagerForChainRun, config: RunnableConfig) -> Moderated:
        items, single = _as_items(value)
        results = self.scorer.score([_judged_text(item) for item in items]) if items else []
        verdicts = self._verdicts(results)
        dispatch_custom_event(MODERATION_EVENT, self._event(verdicts), config=config)
        moderated = [self._apply(item, verdict) for item, verdict in zip(items, verdicts, strict=True)]
        return moderated[0] if single else moderated  # type: ignore[return-value]

    async def _amoderate(
        self, value: Moderated, run_manager: AsyncCallbackManagerForChainRun, config: RunnableConfig
    ) -> Moderated:
        items, single = _as_items(value)
        results = await self.scorer.ascore([_judged_text(item) for item in items]) if items else []
        verdicts = self._verdicts(results)
        await adispatch_custom_event(MODERATION_EVENT, self._event(verdicts), config=config)
        moderated = [self._apply(item, verdict) for item, verdict in zip(items, verdicts, strict=True)]
        return moderated[0] if single else moderated  # type: ignore[return-value]

    def _verdicts(self, results: list[ModerationResult]) -> list[dict[str, Any]]:
        verdicts = []
        for result in results:
            flagged = result.flagged if self.threshold is None else result.score >= self.threshold
            action = (
                "passed"
                if not flagged
                else {"replace": "replaced", "annotate": "annotated", "raise": "raised"}[self.policy]
            )
            verdicts.append(
                {
                    "scorer": self.scorer.name,
                    "score": result.score,
                    "flagged": flagged,
                    "categories": dict(result.categories),
                    "policy": self.policy,
                    "action": action,
                }
            )

        return verdicts

    def _event(self, verdicts: list[dict[str, Any]]) -> dict[str, Any]:
        flagged = sum(verdict["flagged"] for verdict in verdicts)
        logger.info("moderated %d texts: %d flagged, policy=%s", len(verdicts), flagged, self.policy)
        return {"scorer": self.scorer.name, "policy": self.policy, "verdicts": verdicts}

    def _apply(self, item: str | BaseMessage, verdict: dict[str, Any]) -> str | BaseMessage:
        if verdict["flagged"] and self.policy == "raise":
            raise FlaggedContentError(
                _describe(item), scorer=verdict["scorer"], score=verdict["score"], categories=verdict["categories"]
            )

        replace = verdict["flagged"] and self.policy == "replace"
        if isinstance(item, str):
            return self.notice if replace else item

        update: dict[str, Any] = {"response_metadata": {**item.response_metadata, MODERATION_KEY: verdict}}
        if replace:
            update["content"] = self.notice
            if isinstance(item, AIMessage):
                update["tool_calls"] = []
                update["invalid_tool_calls"] = []

        return item.model_copy(update=update)

    def __repr__(self) -> str:
        return f"ModerationRunnable(scorer={self.scorer.name!r}, policy={self.policy!r})"


def _as_items(value: Any) -> tuple[list[str | BaseMessage], bool]:
    if isinstance(value, (str, BaseMessage)):
        return [value], True

    if isinstance(value, Sequence) and all(isinstance(item, (str, BaseMessage)) for item in value):
        return list(value), False

    msg = f"ModerationRunnable accepts a str, a message or a list of them, got {type(value).__name__}."
    raise TypeError(msg)


def _judged_text(item: str | BaseMessage) -> str:
    """Return the text a scorer judges: the message text, plus an AIMessage's tool-call arguments."""
    if isinstance(item, str):
        return item

    parts: list[str] = [str(item.text)] if item.text else []
    if isinstance(item, AIMessage):
        parts += [f"{call['name']}: {json.dumps(call['args'], ensure_ascii=False)}" for call in item.tool_calls]
        parts += [call.get("args") or "" for call in item.invalid_tool_calls]

    return "\n".join(parts)


def _describe(item: str | BaseMessage) -> str:
    if isinstance(item, ToolMessage):
        return f"ToolMessage from tool {item.name!r}" if item.name else "ToolMessage"

    if isinstance(item, BaseMessage):
        return type(item).__name__

    return "text"
