"""Bound tools in the chat template: tool_choice, tool descriptions and tool-call histories.

Tools reach the model through the chat template's own tool support
(``apply_chat_template(..., tools=...)``) when it has one. Many small models' templates,
the embedded SmolLM2-135M's among them, ignore ``tools``; for those, the tools and the
parser's call format are described in the system prompt instead, and earlier tool calls are
written into the assistant turns as the parser renders them.

``tool_choice`` other than ``"auto"`` and ``"none"`` is enforced by prefilling the response
with the opening of a call (see :meth:`~ttsa_guard.tool_parsers.ToolCallParser.prefill`), so
the model can only continue a call; the arguments remain the model's own.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ttsa_guard.errors import ConfigurationError
from ttsa_guard.tool_parsers import ToolCallParser

__all__ = ["TemplateSupport", "ToolRequest", "normalize_tool_choice", "prepare_tool_request", "probe_template"]

logger = logging.getLogger(__name__)

_PROBE_TOOL = "ttsa_probe_tool"
_PROBE_CALL = "ttsa_probe_call"
_warned_prefill: set[str] = set()


@dataclass(frozen=True)
class TemplateSupport:
    """Tool features that a chat template renders."""

    tools: bool
    """The ``tools`` argument appears in the rendered prompt."""
    tool_calls: bool
    """The ``tool_calls`` of assistant messages appear in the rendered prompt."""


@dataclass(frozen=True)
class ToolRequest:
    """A conversation ready for the guard, with what it needs to parse and moderate the response."""

    messages: list[dict[str, Any]]
    template_tools: list[dict[str, Any]] | None = None
    """Tools passed to the chat template; None when it cannot render them or none are offered."""
    prefill: str = ""
    """Opening of the response that forces a tool call; empty unless tool_choice forces one."""
    parser: ToolCallParser | None = None
    """Parser of the response; None when no tools are offered."""
    moderation_text: Callable[[str], str] | None = field(default=None, repr=False)
    """Maps a response to the text the scorer judges; None judges the response as is."""


def normalize_tool_choice(tool_choice: Any, tool_names: Sequence[str]) -> str:
    """Return ``"auto"``, ``"none"``, ``"any"`` or the name of the one tool to call.

    Accepts None or ``"auto"``; ``"none"``; ``"any"``, ``"required"`` or True; a tool name; and
    ``{"type": "function", "function": {"name": ...}}`` or ``{"type": "tool", "name": ...}``.
    ``"any"`` with a single tool names that tool.

    Raises:
        ConfigurationError: The value is not one of these forms, or names a tool that is not bound.
    """
    if tool_choice is None or tool_choice == "auto" or tool_choice is False:
        return "auto"

    if tool_choice == "none":
        return "none"

    if tool_choice in ("any", "required") or tool_choice is True:
        return tool_names[0] if len(tool_names) == 1 else "any"

    name = tool_choice
    if isinstance(tool_choice, Mapping):
        function = tool_choice.get("function")
        name = function.get("name") if isinstance(function, Mapping) else tool_choice.get("name")
        if tool_choice.get("type") in ("any", "auto", "none") and name is None:
            return normalize_tool_choice(tool_choice["type"], tool_names)

    if isinstance(name, str) and name in tool_names:
        return name

    msg = (
        f"tool_choice={tool_choice!r} is not supported. Pass 'auto', 'none', 'any' (or 'required'), "
        f"or the name of a bound tool: {', '.join(tool_names) or 'no tools are bound'}."
    )
    raise ConfigurationError(msg)


def probe_template(backend: Any) -> TemplateSupport:
    """Render small probe conversations to learn whether the template shows tools and tool calls."""
    render = getattr(backend, "render", None)
    if render is None:
        return TemplateSupport(tools=False, tool_calls=False)

    user = [{"role": "user", "content": "probe"}]
    tool = {
        "type": "function",
        "function": {"name": _PROBE_TOOL, "description": "", "parameters": {"type": "object", "properties": {}}},
    }
    call = {"type": "function", "id": "probe", "function": {"name": _PROBE_CALL, "arguments": {}}}
    history: list[dict[str, Any]] = [
        *user,
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "content": "1", "tool_call_id": "probe"},
    ]
    return TemplateSupport(
        tools=_renders(render, user, [tool], _PROBE_TOOL),
        tool_calls=_renders(render, history, None, _PROBE_CALL),
    )


def _renders(render: Callable[..., str], messages: list[dict[str, Any]], tools: Any, marker: str) -> bool:
    try:
        return marker in render(messages, tools=tools)
    except Exception as exc:  # noqa: BLE001 - templates fail in many ways; any failure means no support
        logger.debug("chat template cannot render the %s probe: %s: %s", marker, type(exc).__name__, exc)
        return False


def prepare_tool_request(
    messages: list[dict[str, Any]],
    tools: Sequence[Mapping[str, Any]] | None,
    tool_choice: Any,
    parser: ToolCallParser,
    backend: Any,
) -> ToolRequest:
    """Fit the conversation and the bound tools to what the backend's template renders.

    Args:
        messages: Chat-template dicts from :func:`~ttsa_guard.messages.to_chat_dicts`.
        tools: Bound tools in OpenAI format, or None.
        tool_choice: As accepted by :func:`normalize_tool_choice`.
        parser: The model family's tool-call format.
        backend: The backend; its ``render`` method, if any, is probed for tool support.
    """
    support = probe_template(backend)
    if not support.tool_calls:
        messages = [_write_calls_as_text(message, parser) for message in messages]

    offered = [dict(tool) for tool in tools or []]
    names = [tool["function"]["name"] for tool in offered]
    choice = normalize_tool_choice(tool_choice, names) if offered else "none"
    if choice == "none":
        return ToolRequest(messages=messages)

    if not support.tools:
        messages = _with_system_text(messages, _describe_tools(offered, parser, choice))

    prefill = ""
    if choice != "auto":
        prefill = parser.prefill(None if choice == "any" else choice)
        if not _accepts_prefill(backend):
            _warn_no_prefill(backend)
            prefill = ""

    return ToolRequest(
        messages=messages,
        template_tools=offered if support.tools else None,
        prefill=prefill,
        parser=parser,
        moderation_text=lambda text: parser.parse(text).moderation_text(),
    )


def _describe_tools(tools: list[dict[str, Any]], parser: ToolCallParser, choice: str) -> str:
    """Describe the tools as short signatures: a 135M model copies full JSON schemas into its calls."""
    lines = ["You can call these tools:"]
    for tool in tools:
        function = tool["function"]
        schema = function.get("parameters") or {}
        properties = schema.get("properties") or {}
        required = set(schema.get("required") or [])
        arguments = ", ".join(
            f"{name}: {_type_name(spec)}" + ("" if name in required else " (optional)")
            for name, spec in properties.items()
        )
        description = (function.get("description") or "").strip()
        lines.append(f"- {function['name']}({arguments})" + (f": {description}" if description else ""))
        lines += [
            f"    {name}: {spec['description']}"
            for name, spec in properties.items()
            if isinstance(spec, Mapping) and spec.get("description")
        ]

    lines.append(parser.instructions())
    if choice == "auto":
        lines.append("Call a tool only when it helps to answer; otherwise answer in plain text.")
    elif choice == "any":
        lines.append("You must call one of these tools.")
    else:
        lines.append(f"You must call the tool {choice}.")

    return "\n".join(lines)


def _type_name(spec: Any) -> str:
    if not isinstance(spec, Mapping):
        return "any"

    if "enum" in spec:
        return "one of " + ", ".join(repr(value) for value in spec["enum"])

    kind = spec.get("type")
    if isinstance(kind, list):
        return " or ".join(str(k) for k in kind)

    if kind is None and "anyOf" in spec:
        return " or ".join(_type_name(option) for option in spec["anyOf"])

    if kind == "array" and isinstance(spec.get("items"), Mapping):
        return f"array of {_type_name(spec['items'])}"

    return str(kind) if kind else "any"


def _with_system_text(messages: list[dict[str, Any]], text: str) -> list[dict[str, Any]]:
    """Append ``text`` to the first system message, or start the conversation with one."""
    if messages and messages[0].get("role") == "system":
        first = dict(messages[0])
        first["content"] = f"{first['content']}\n\n{text}" if first["content"].strip() else text
        return [first, *messages[1:]]

    return [{"role": "system", "content": text}, *messages]


def _write_calls_as_text(message: dict[str, Any], parser: ToolCallParser) -> dict[str, Any]:
    """Move an assistant message's tool calls into its text, for templates that drop them."""
    calls = message.get("tool_calls")
    if message.get("role") != "assistant" or not calls:
        return message

    rendered = [parser.render_call(call["function"]["name"], call["function"]["arguments"]) for call in calls]
    text = "\n".join([message["content"], *rendered]) if message["content"].strip() else "\n".join(rendered)
    converted = {key: value for key, value in message.items() if key != "tool_calls"}
    converted["content"] = text
    return converted


def _accepts_prefill(backend: Any) -> bool:
    try:
        return "prefill" in inspect.signature(backend.encode).parameters
    except (TypeError, ValueError):
        return False


def _warn_no_prefill(backend: Any) -> None:
    name = str(getattr(backend, "name", type(backend).__name__))
    if name in _warned_prefill:
        return

    _warned_prefill.add(name)
    logger.warning(
        "backend %s cannot prefill responses, so tool_choice is treated as 'auto'; add a prefill "
        "argument to its encode method to force tool calls",
        name,
    )
