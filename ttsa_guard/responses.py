"""Guard outcomes as LangChain output: messages, stream chunks and correction events.

Streaming never shows unmoderated text: the guard finishes, correction included, before
:func:`stream_chunks` splits the returned message into word-sized chunks.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from typing import Any

from langchain_core.callbacks import (
    AsyncCallbackManager,
    AsyncCallbackManagerForLLMRun,
    CallbackManager,
    CallbackManagerForLLMRun,
)
from langchain_core.messages import AIMessage, AIMessageChunk
from langchain_core.messages.tool import tool_call_chunk
from langchain_core.outputs import ChatGenerationChunk
from langchain_core.runnables.config import (
    ensure_config,
    get_async_callback_manager_for_config,
    get_callback_manager_for_config,
)

from ttsa_guard.audit import AUDIT_KEY, GuardAudit, GuardOutcome
from ttsa_guard.tool_parsers import ParsedResponse

__all__ = [
    "CORRECTION_EVENT",
    "adispatch_correction",
    "build_message",
    "correction_event_data",
    "dispatch_correction",
    "split_text",
    "stream_chunks",
]

logger = logging.getLogger(__name__)

CORRECTION_EVENT = "ttsa_guard.correction"
"""Name of the custom callback event sent for each guarded call whose plain response was not
returned as is (status ``corrected``, ``unresolved`` or ``refused``)."""

_EVENT_FIELDS = {
    "status",
    "model",
    "scorer",
    "search_scorer",
    "score_before",
    "flagged_before",
    "score_after",
    "flagged_after",
    "iterations",
    "generations",
    "scores",
    "verifications",
    "seconds",
    "cosine_similarity",
    "stop_reason",
    "failure_policy",
    "error",
}
_WORD_BOUNDARY = re.compile(r"(?<=\s)(?=\S)")


def build_message(
    outcome: GuardOutcome, parsed: ParsedResponse | None, *, parallel_tool_calls: bool = True
) -> AIMessage:
    """Build the AIMessage of a guarded call.

    Args:
        outcome: What the guard returned.
        parsed: The guarded text split into content and tool calls; None when no tools are bound,
            so the text is the content.
        parallel_tool_calls: False keeps only the first tool call.
    """
    tool_calls = list(parsed.tool_calls) if parsed else []
    if not parallel_tool_calls:
        tool_calls = tool_calls[:1]

    return AIMessage(
        content=parsed.content if parsed else outcome.text,
        tool_calls=tool_calls,
        invalid_tool_calls=list(parsed.invalid_tool_calls) if parsed else [],
        response_metadata={"model_name": outcome.audit.model, AUDIT_KEY: outcome.audit.model_dump()},
        usage_metadata={
            "input_tokens": outcome.input_tokens,
            "output_tokens": outcome.output_tokens,
            "total_tokens": outcome.input_tokens + outcome.output_tokens,
        },
    )


def split_text(text: str) -> list[str]:
    """Split ``text`` into word-sized pieces, each keeping the whitespace after it."""
    return [piece for piece in _WORD_BOUNDARY.split(text) if piece]


def stream_chunks(message: AIMessage) -> Iterator[ChatGenerationChunk]:
    """Yield a finished message as chunks whose sum equals it.

    Text comes in word-sized chunks. The last chunk has empty content, the tool calls, the
    response and usage metadata, and ``chunk_position="last"``, so input tokens are counted once.
    """
    content = message.content if isinstance(message.content, str) else message.text
    for piece in split_text(content):
        yield ChatGenerationChunk(message=AIMessageChunk(content=piece))

    calls = [
        tool_call_chunk(
            name=call["name"], args=json.dumps(call["args"], ensure_ascii=False), id=call["id"], index=index
        )
        for index, call in enumerate(message.tool_calls)
    ]
    calls += [
        tool_call_chunk(name=call["name"], args=call["args"], id=call["id"], index=len(calls) + offset)
        for offset, call in enumerate(message.invalid_tool_calls)
    ]
    last = AIMessageChunk(
        content="",
        tool_call_chunks=calls,
        response_metadata=dict(message.response_metadata),
        usage_metadata=message.usage_metadata,
        chunk_position="last",
    )
    yield ChatGenerationChunk(message=last)


def correction_event_data(audit: GuardAudit) -> dict[str, Any] | None:
    """Return the payload of a correction event, or None when the plain response passed.

    The payload contains scores, counts and timings only: no response text and no steered prompt.
    """
    if audit.status == "passed":
        return None

    return audit.model_dump(include=_EVENT_FIELDS)


def dispatch_correction(run_manager: CallbackManagerForLLMRun | None, audit: GuardAudit) -> None:
    """Send the correction event to the chat model run's handlers.

    Without a run manager, the event goes to the enclosing run (a chain, tool or agent node)
    when there is one.
    """
    data = correction_event_data(audit)
    if data is None:
        return

    if run_manager is not None:
        manager = CallbackManager(
            run_manager.handlers,
            run_manager.inheritable_handlers,
            run_manager.run_id,
            tags=run_manager.tags,
            inheritable_tags=run_manager.inheritable_tags,
            metadata=run_manager.metadata,
            inheritable_metadata=run_manager.inheritable_metadata,
        )
        manager.on_custom_event(CORRECTION_EVENT, data, run_id=run_manager.run_id)
        return

    enclosing = get_callback_manager_for_config(ensure_config())
    if enclosing.parent_run_id is None:
        logger.debug("no callback run to receive the %s event", CORRECTION_EVENT)
        return

    enclosing.on_custom_event(CORRECTION_EVENT, data, run_id=enclosing.parent_run_id)


async def adispatch_correction(run_manager: AsyncCallbackManagerForLLMRun | None, audit: GuardAudit) -> None:
    """Send the correction event to the chat model run's async handlers; see :func:`dispatch_correction`."""
    data = correction_event_data(audit)
    if data is None:
        return

    if run_manager is None:
        enclosing = get_async_callback_manager_for_config(ensure_config())
        if enclosing.parent_run_id is None:
            logger.debug("no callback run to receive the %s event", CORRECTION_EVENT)
            return

        await enclosing.on_custom_event(CORRECTION_EVENT, data, run_id=enclosing.parent_run_id)
        return

    manager = AsyncCallbackManager(
        run_manager.handlers,
        run_manager.inheritable_handlers,
        run_manager.run_id,
        tags=run_manager.tags,
        inheritable_tags=run_manager.inheritable_tags,
        metadata=run_manager.metadata,
        inheritable_metadata=run_manager.inheritable_metadata,
    )
    await manager.on_custom_event(CORRECTION_EVENT, data, run_id=run_manager.run_id)
