"""Conversion of LangChain messages to the role/content dicts of chat templates."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from langchain_core.messages import AIMessage, BaseMessage, ChatMessage, HumanMessage, SystemMessage, ToolMessage

from ttsa_guard.errors import InvalidInputError

__all__ = ["message_text", "to_chat_dicts"]


def to_chat_dicts(messages: Sequence[BaseMessage]) -> list[dict[str, Any]]:
    """Convert LangChain messages to chat-template dicts, rejecting input the guard cannot read.

    Raises:
        InvalidInputError: No messages, an unsupported message type or content block, or a last
            message that is empty or whitespace only (a ToolMessage may be empty).
    """
    if not messages:
        msg = "The message list is empty; pass at least one HumanMessage."
        raise InvalidInputError(msg)

    converted = [_to_dict(message, index) for index, message in enumerate(messages)]
    last = converted[-1]
    # A tool may return an empty result, and the model still responds to it.
    if not last["content"].strip() and not last.get("tool_calls") and last["role"] != "tool":
        msg = f"The last message ({type(messages[-1]).__name__}) is empty or whitespace only; pass text to answer."
        raise InvalidInputError(msg)

    return converted


def message_text(message: BaseMessage, index: int = 0) -> str:
    """Return the text of a message, joining text blocks; other blocks raise InvalidInputError."""
    content = message.content
    if isinstance(content, str):
        return content

    parts = []
    for block in content:
        if isinstance(block, str):
            parts.append(block)
        elif isinstance(block, dict) and block.get("type") == "text":
            parts.append(str(block.get("text", "")))
        else:
            kind = block.get("type", "unknown") if isinstance(block, dict) else type(block).__name__
            msg = (
                f"Message {index} ({type(message).__name__}) has a {kind!r} content block; "
                "the guarded model reads text only. Pass text blocks or a string."
            )
            raise InvalidInputError(msg)

    return "".join(parts)


def _to_dict(message: BaseMessage, index: int) -> dict[str, Any]:
    text = message_text(message, index)
    if isinstance(message, SystemMessage):
        return {"role": "system", "content": text}

    if isinstance(message, HumanMessage):
        return {"role": "user", "content": text}

    if isinstance(message, AIMessage):
        converted: dict[str, Any] = {"role": "assistant", "content": text}
        if message.tool_calls:
            converted["tool_calls"] = [
                {"type": "function", "id": call.get("id"), "function": {"name": call["name"], "arguments": call["args"]}}
                for call in message.tool_calls
            ]
        return converted

    if isinstance(message, ToolMessage):
        return {"role": "tool", "content": text, "tool_call_id": message.tool_call_id, "name": message.name}

    if isinstance(message, ChatMessage):
        return {"role": message.role, "content": text}

    msg = (
        f"Message {index} has unsupported type {type(message).__name__}; pass SystemMessage, "
        "HumanMessage, AIMessage, ToolMessage or ChatMessage."
    )
    raise InvalidInputError(msg)

