"""Agent middleware that moderates tool results before the model reads them.

Needs the ``langchain`` package (``pip install 'ttsa-guard[agents]'``). The guarded chat
model already corrects its own tool calls; this middleware covers the other direction, text
that a tool returns into the conversation:

.. code-block:: python

    from langchain.agents import create_agent
    from ttsa_guard import GuardedChatModel, ToolResultModerationMiddleware

    agent = create_agent(
        GuardedChatModel(),
        tools=[search],
        middleware=[ToolResultModerationMiddleware("profanity", policy="replace")],
    )
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, cast

from langchain_core.messages import ToolMessage

from ttsa_guard.runnables import DEFAULT_NOTICE, ModerationPolicy, ModerationRunnable

try:
    from langchain.agents.middleware import AgentMiddleware
    from langgraph.prebuilt.tool_node import ToolCallRequest
    from langgraph.types import Command
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    msg = "ToolResultModerationMiddleware needs the langchain package: pip install 'ttsa-guard[agents]'"
    raise ImportError(msg) from exc

__all__ = ["ToolResultModerationMiddleware"]

logger = logging.getLogger(__name__)

ToolResult = ToolMessage | Command


class ToolResultModerationMiddleware(AgentMiddleware):
    """Scores each tool result and applies a moderation policy before the model reads it.

    ``"replace"`` (default) swaps a flagged result for ``notice``, so the model never reads
    it; ``"annotate"`` passes it through with the verdict in its ``response_metadata``;
    ``"raise"`` stops the agent with :class:`~ttsa_guard.runnables.FlaggedContentError`. A tool
    that returns a ``Command`` has the ToolMessages in its state update moderated.

    Args:
        scorer: A scorer name, a Scorer, or a function from text to a score in [0, 1].
        policy: ``"replace"``, ``"annotate"`` or ``"raise"``.
        notice: Text that replaces a flagged result under ``"replace"``.
        threshold: Score at or above which a result counts as flagged; None uses the scorer's
            own decision.
        tools: Names of the tools whose results are moderated; None (default) moderates all.
    """

    def __init__(
        self,
        scorer: Any = "profanity",
        *,
        policy: ModerationPolicy = "replace",
        notice: str = DEFAULT_NOTICE,
        threshold: float | None = None,
        tools: Iterable[str] | None = None,
    ) -> None:
        super().__init__()
        self.moderation = ModerationRunnable(scorer, policy=policy, notice=notice, threshold=threshold)
        self.tool_names = frozenset(tools) if tools is not None else None

    def wrap_tool_call(self, request: ToolCallRequest, handler: Callable[[ToolCallRequest], ToolResult]) -> ToolResult:
        """Run the tool, then moderate its result."""
        result = handler(request)
        if not self._applies(request):
            return result

        if isinstance(result, ToolMessage):
            return cast(ToolMessage, self.moderation.invoke(result))

        messages = _command_messages(result)
        if messages is None:
            return result

        moderated = [self.moderation.invoke(m) if isinstance(m, ToolMessage) else m for m in messages]
        return _with_messages(result, moderated)

    async def awrap_tool_call(
        self, request: ToolCallRequest, handler: Callable[[ToolCallRequest], Awaitable[ToolResult]]
    ) -> ToolResult:
        """Run the tool, then moderate its result without blocking the event loop."""
        result = await handler(request)
        if not self._applies(request):
            return result

        if isinstance(result, ToolMessage):
            return cast(ToolMessage, await self.moderation.ainvoke(result))

        messages = _command_messages(result)
        if messages is None:
            return result

        moderated = [await self.moderation.ainvoke(m) if isinstance(m, ToolMessage) else m for m in messages]
        return _with_messages(result, moderated)

    def _applies(self, request: ToolCallRequest) -> bool:
        return self.tool_names is None or request.tool_call["name"] in self.tool_names


def _command_messages(result: Command) -> list[Any] | None:
    """Return the messages of a Command's state update, or None when it has none."""
    update = result.update
    if not isinstance(update, dict) or not isinstance(update.get("messages"), list):
        logger.debug("tool returned a Command without a messages update; nothing to moderate")
        return None

    return update["messages"]


def _with_messages(result: Command, messages: list[Any]) -> Command:
    update = cast(dict[str, Any], result.update)
    return dataclasses.replace(result, update={**update, "messages": messages})
