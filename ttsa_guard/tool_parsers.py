"""Tool-call formats: how a model family writes tool calls, and how to read them back.

A :class:`ToolCallParser` handles one family's format in both directions. It parses a
response into text content, tool calls and invalid tool calls. It also renders a call into an
earlier assistant turn when the chat template cannot, describes the format for the system
prompt when the template has no tool support, and gives the opening text that forces a call.

Two parsers are registered by name:

* ``"hermes"`` (default): ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``
  blocks, the format of Hermes models and of the Qwen2.5 chat templates. A response that is
  one bare JSON object with ``name`` and ``arguments`` also counts as a call.
* ``"json"``: the whole response is a JSON object, or a list of them, with ``name`` and
  ``arguments`` or ``parameters``, as Llama 3.1 writes calls.

Other families plug in with :func:`register_tool_call_parser` or through
``GuardedChatModel(tool_parser=...)``.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from langchain_core.messages import InvalidToolCall, ToolCall
from langchain_core.messages.tool import invalid_tool_call, tool_call

from ttsa_guard.errors import ConfigurationError

__all__ = [
    "HermesToolCallParser",
    "JsonToolCallParser",
    "ParsedResponse",
    "ToolCallParser",
    "get_tool_call_parser",
    "register_tool_call_parser",
]

_NAME = re.compile(r'"name"\s*:\s*"([^"]+)"')
_FENCE = re.compile(r"\A```(?:json)?\s*(.*?)\s*```\Z", re.DOTALL)


@dataclass(frozen=True)
class ParsedResponse:
    """A response split into text content and tool calls."""

    content: str
    """Text outside the tool calls; the whole response when it has none."""
    tool_calls: list[ToolCall] = field(default_factory=list)
    invalid_tool_calls: list[InvalidToolCall] = field(default_factory=list)
    """Malformed calls; ``args`` is the raw text of each call, markers included."""

    def moderation_text(self) -> str:
        """Return the text a scorer judges: the content, then each call with decoded arguments.

        Arguments are decoded from JSON first, so escapes such as ``\\u0041`` cannot hide words.
        """
        parts = [self.content] if self.content else []
        parts += [f"{call['name']}: {json.dumps(call['args'], ensure_ascii=False)}" for call in self.tool_calls]
        parts += [call["args"] or "" for call in self.invalid_tool_calls]
        return "\n".join(parts)


@runtime_checkable
class ToolCallParser(Protocol):
    """One model family's tool-call format.

    LangChain rebuilds streamed tool calls with a partial-JSON parser. A truncated call would
    come back valid from ``stream`` if its ``args`` parsed as a JSON object, so ``parse`` must
    give an invalid call ``args`` that does not, such as the raw call with its markers.
    """

    name: str

    def parse(self, text: str) -> ParsedResponse:
        """Split a response into content, tool calls and invalid tool calls.

        A malformed call becomes an invalid tool call, not an exception.
        """
        ...

    def render_call(self, name: str, arguments: Mapping[str, Any]) -> str:
        """Write one call as the model would, for earlier assistant turns."""
        ...

    def instructions(self) -> str:
        """Describe the call format for a system prompt."""
        ...

    def prefill(self, tool_name: str | None) -> str:
        """Return the opening of a call to ``tool_name`` (None: any tool) that forces a call."""
        ...


class HermesToolCallParser:
    """``<tool_call>`` blocks, each containing ``{"name": ..., "arguments": {...}}``.

    A block with invalid JSON becomes an invalid tool call. A block that is not closed still
    counts when its JSON is complete, because small models often stop before the closing tag.
    Without blocks, a response that is exactly one JSON object with ``name`` and ``arguments``
    is read as a call, and any other text is content.
    """

    name = "hermes"

    _BLOCK = re.compile(r"<tool_call>(.*?)(</tool_call>|\Z)", re.DOTALL)

    def parse(self, text: str) -> ParsedResponse:
        """Split ``text`` into content and the calls of its ``<tool_call>`` blocks."""
        blocks = list(self._BLOCK.finditer(text))
        if not blocks:
            calls = _read_bare_json(text, ("arguments",))
            return ParsedResponse("", calls) if calls else ParsedResponse(text)

        valid: list[ToolCall] = []
        invalid: list[InvalidToolCall] = []
        for block in blocks:
            read, failed = _read_calls(block.group(1), block.group(0), ("arguments", "parameters"))
            if failed and not block.group(2):
                error = (
                    "The <tool_call> block is not closed and its JSON is incomplete; "
                    "the response may have reached max_tokens."
                )
                failed = [_invalid(block.group(0), block.group(1), error)]

            valid += read
            invalid += failed

        content = self._BLOCK.sub("", text).strip()
        return ParsedResponse(content, valid, invalid)

    def render_call(self, name: str, arguments: Mapping[str, Any]) -> str:
        """Write a call as a ``<tool_call>`` block."""
        body = json.dumps({"name": name, "arguments": dict(arguments)}, ensure_ascii=False)
        return f"<tool_call>\n{body}\n</tool_call>"

    def instructions(self) -> str:
        """Describe the ``<tool_call>`` format."""
        return (
            "To call a tool, reply with a JSON object holding its name and arguments inside "
            "<tool_call></tool_call> tags, one block per call:\n"
            '<tool_call>\n{"name": "tool_name", "arguments": {"parameter": "value"}}\n</tool_call>'
        )

    def prefill(self, tool_name: str | None) -> str:
        """Open a ``<tool_call>`` block, with the tool's name when one is given."""
        if tool_name is None:
            return '<tool_call>\n{"name": "'

        return '<tool_call>\n{"name": ' + json.dumps(tool_name, ensure_ascii=False) + ', "arguments": '

    def __repr__(self) -> str:
        return "HermesToolCallParser()"


class JsonToolCallParser:
    """The whole response is one JSON call object or a list of them.

    This format has no markers, so a response that is not a well-formed call is content, never an
    invalid tool call.

    Args:
        arguments_key: Key of the arguments object when rendering and forcing calls:
            ``"arguments"`` (default) or ``"parameters"`` (Llama 3.1). Parsing accepts both.
    """

    name = "json"

    def __init__(self, arguments_key: str = "arguments") -> None:
        if arguments_key not in ("arguments", "parameters"):
            msg = f"arguments_key must be 'arguments' or 'parameters', got {arguments_key!r}."
            raise ConfigurationError(msg)

        self.arguments_key = arguments_key

    def parse(self, text: str) -> ParsedResponse:
        """Read ``text`` as JSON calls, or return it as content."""
        calls = _read_bare_json(text, ("arguments", "parameters"))
        return ParsedResponse("", calls) if calls else ParsedResponse(text)

    def render_call(self, name: str, arguments: Mapping[str, Any]) -> str:
        """Write a call as a JSON object."""
        return json.dumps({"name": name, self.arguments_key: dict(arguments)}, ensure_ascii=False)

    def instructions(self) -> str:
        """Describe the JSON call format."""
        return (
            "To call a tool, reply with only a JSON object holding its name and arguments:\n"
            f'{{"name": "tool_name", "{self.arguments_key}": {{"parameter": "value"}}}}'
        )

    def prefill(self, tool_name: str | None) -> str:
        """Open a JSON call object, with the tool's name when one is given."""
        if tool_name is None:
            return '{"name": "'

        return '{"name": ' + json.dumps(tool_name, ensure_ascii=False) + f', "{self.arguments_key}": '

    def __repr__(self) -> str:
        return f"JsonToolCallParser(arguments_key={self.arguments_key!r})"


_PARSERS: dict[str, ToolCallParser] = {"hermes": HermesToolCallParser(), "json": JsonToolCallParser()}


def register_tool_call_parser(parser: ToolCallParser, *, replace: bool = False) -> None:
    """Make ``parser`` selectable by its ``name``, as in ``GuardedChatModel(tool_parser=name)``.

    Raises:
        ConfigurationError: ``parser`` lacks a method of the protocol, or its name is taken and
            ``replace`` is False.
    """
    if not isinstance(parser, ToolCallParser):
        msg = (
            f"{type(parser).__name__} is not a ToolCallParser; it needs a name and the methods "
            "parse, render_call, instructions and prefill."
        )
        raise ConfigurationError(msg)

    if parser.name in _PARSERS and not replace:
        msg = f"A tool-call parser named {parser.name!r} is already registered; pass replace=True to override it."
        raise ConfigurationError(msg)

    _PARSERS[parser.name] = parser


def get_tool_call_parser(spec: str | ToolCallParser) -> ToolCallParser:
    """Return the registered parser named ``spec``, or ``spec`` itself when it is a parser.

    Raises:
        ConfigurationError: No parser has that name.
    """
    if isinstance(spec, ToolCallParser):
        return spec

    if isinstance(spec, str) and spec in _PARSERS:
        return _PARSERS[spec]

    msg = f"Unknown tool-call parser {spec!r}. Registered: {', '.join(sorted(_PARSERS))}, or pass a ToolCallParser."
    raise ConfigurationError(msg)


def _read_calls(body: str, raw: str, argument_keys: tuple[str, ...]) -> tuple[list[ToolCall], list[InvalidToolCall]]:
    """Read the JSON of one call block, which may hold one call object or a list of them."""
    try:
        data = json.loads(body)
    except json.JSONDecodeError as exc:
        return [], [_invalid(raw, body, f"The tool call is not valid JSON: {exc}.")]

    items = data if isinstance(data, list) else [data]
    valid: list[ToolCall] = []
    invalid: list[InvalidToolCall] = []
    for item in items:
        call, error = _to_tool_call(item, argument_keys)
        if call is not None:
            valid.append(call)
        else:
            invalid.append(_invalid(raw, body, error))

    return valid, invalid


def _read_bare_json(text: str, argument_keys: tuple[str, ...]) -> list[ToolCall]:
    """Return the calls of a response that is only JSON calls, else an empty list."""
    stripped = text.strip()
    fenced = _FENCE.match(stripped)
    if fenced:
        stripped = fenced.group(1)

    if not stripped.startswith(("{", "[")):
        return []

    try:
        data = json.loads(stripped)
    except json.JSONDecodeError:
        return []

    items = data if isinstance(data, list) else [data]
    calls = [_to_tool_call(item, argument_keys)[0] for item in items]
    if not items or any(call is None for call in calls):
        return []

    return calls  # type: ignore[return-value]


def _to_tool_call(item: Any, argument_keys: tuple[str, ...]) -> tuple[ToolCall | None, str]:
    """Check one decoded call object; return the call, or None and the reason it is invalid."""
    if not isinstance(item, dict):
        return None, f"A tool call must be a JSON object, got {type(item).__name__}."

    name = item.get("name")
    if not isinstance(name, str) or not name:
        return None, "The tool call has no 'name' string."

    key = next((k for k in argument_keys if k in item), None)
    arguments = item.get(key, {}) if key else {}
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except json.JSONDecodeError:
            return None, f"The arguments of tool call {name!r} are a string that is not JSON."

    if not isinstance(arguments, dict):
        return None, f"The arguments of tool call {name!r} must be a JSON object, got {type(arguments).__name__}."

    return tool_call(name=name, args=arguments, id=_new_id()), ""


def _invalid(raw: str, body: str, error: str) -> InvalidToolCall:
    match = _NAME.search(body)
    return invalid_tool_call(name=match.group(1) if match else None, args=raw, id=_new_id(), error=error)


def _new_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"
