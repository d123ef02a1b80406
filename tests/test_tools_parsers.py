"""Tool-call parsers: the Hermes and JSON formats, their rendering and the registry."""

from __future__ import annotations

import json

import pytest

from ttsa_guard import ConfigurationError, HermesToolCallParser, JsonToolCallParser, get_tool_call_parser, tool_parsers
from ttsa_guard.tool_parsers import ParsedResponse, register_tool_call_parser

HERMES = HermesToolCallParser()
JSON = JsonToolCallParser()


def test_hermes_reads_one_call_and_its_text():
    text = 'Let me look.\n<tool_call>\n{"name": "get_weather", "arguments": {"location": "Paris"}}\n</tool_call>'

    parsed = HERMES.parse(text)

    assert parsed.content == "Let me look."
    assert len(parsed.tool_calls) == 1
    call = parsed.tool_calls[0]
    assert call["name"] == "get_weather"
    assert call["args"] == {"location": "Paris"}
    assert call["id"].startswith("call_")
    assert call["type"] == "tool_call"
    assert parsed.invalid_tool_calls == []


def test_hermes_reads_multiple_calls_in_order():
    text = (
        '<tool_call>{"name": "add", "arguments": {"a": 1, "b": 2}}</tool_call>\n'
        '<tool_call>{"name": "multiply", "parameters": {"a": 3, "b": 4}}</tool_call>'
    )

    parsed = HERMES.parse(text)

    assert [call["name"] for call in parsed.tool_calls] == ["add", "multiply"]
    assert [call["args"] for call in parsed.tool_calls] == [{"a": 1, "b": 2}, {"a": 3, "b": 4}]
    assert parsed.tool_calls[0]["id"] != parsed.tool_calls[1]["id"]
    assert parsed.content == ""


def test_hermes_reads_call_list_block():
    text = '<tool_call>[{"name": "a", "arguments": {}}, {"name": "b", "arguments": {"x": 1}}]</tool_call>'

    parsed = HERMES.parse(text)

    assert [(call["name"], call["args"]) for call in parsed.tool_calls] == [("a", {}), ("b", {"x": 1})]


def test_hermes_invalid_json_becomes_invalid_tool_call():
    text = '<tool_call>\n{"name": "get_weather", "arguments": {"location": Paris}}\n</tool_call>'

    parsed = HERMES.parse(text)

    assert parsed.tool_calls == []
    assert len(parsed.invalid_tool_calls) == 1
    invalid = parsed.invalid_tool_calls[0]
    assert invalid["name"] == "get_weather"
    assert invalid["args"] == text
    assert "not valid JSON" in invalid["error"]
    assert invalid["id"].startswith("call_")


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ('{"arguments": {}}', "no 'name' string"),
        ('{"name": "f", "arguments": [1, 2]}', "must be a JSON object, got list"),
        ('{"name": "f", "arguments": "not json"}', "a string that is not JSON"),
        ("42", "must be a JSON object, got int"),
    ],
)
def test_hermes_wrong_call_shape_is_invalid(body, error):
    parsed = HERMES.parse(f"<tool_call>{body}</tool_call>")

    assert parsed.tool_calls == []
    assert error in parsed.invalid_tool_calls[0]["error"]


def test_hermes_arguments_given_as_json_string_are_decoded():
    parsed = HERMES.parse('<tool_call>{"name": "f", "arguments": "{\\"a\\": 1}"}</tool_call>')

    assert parsed.tool_calls[0]["args"] == {"a": 1}


def test_hermes_unclosed_complete_block_counts():
    parsed = HERMES.parse('<tool_call>\n{"name": "f", "arguments": {"a": 1}}')

    assert [call["args"] for call in parsed.tool_calls] == [{"a": 1}]
    assert parsed.invalid_tool_calls == []


def test_hermes_truncated_block_is_invalid():
    text = 'Sure. <tool_call>\n{"name": "f", "arguments": {"a": '

    parsed = HERMES.parse(text)

    assert parsed.tool_calls == []
    assert parsed.content == "Sure."
    assert "not closed" in parsed.invalid_tool_calls[0]["error"]
    assert parsed.invalid_tool_calls[0]["args"].startswith("<tool_call>")


def test_no_call_keeps_text_exactly():
    text = "  Rain falls.\n\n"

    assert HERMES.parse(text) == ParsedResponse(text)
    assert JSON.parse(text) == ParsedResponse(text)


@pytest.mark.parametrize("parser", [HERMES, JSON])
def test_bare_json_call_is_read(parser):
    parsed = parser.parse('  {"name": "get_weather", "arguments": {"location": "Oslo"}}\n')

    assert parsed.content == ""
    assert [(call["name"], call["args"]) for call in parsed.tool_calls] == [("get_weather", {"location": "Oslo"})]


@pytest.mark.parametrize(
    "text",
    ['{"answer": 42}', '{"name": "f", "arguments": 3}', '{"name": "f", "arguments": {"a": 1', "[]", "[1, 2]"],
)
def test_json_that_is_not_a_call_stays_content(text):
    assert JSON.parse(text) == ParsedResponse(text)
    assert HERMES.parse(text) == ParsedResponse(text)


def test_json_parser_reads_lists_fences_and_parameters():
    text = '```json\n[{"name": "a", "parameters": {"x": 1}}, {"name": "b"}]\n```'

    parsed = JSON.parse(text)

    assert [(call["name"], call["args"]) for call in parsed.tool_calls] == [("a", {"x": 1}), ("b", {})]


@pytest.mark.parametrize("parser", [HERMES, JSON, JsonToolCallParser(arguments_key="parameters")])
def test_rendered_call_parses_back(parser):
    arguments = {"city": "Zürich", "days": 3}

    parsed = parser.parse(parser.render_call("forecast", arguments))

    assert [(call["name"], call["args"]) for call in parsed.tool_calls] == [("forecast", arguments)]


@pytest.mark.parametrize("parser", [HERMES, JSON])
def test_prefill_completed_by_arguments_parses(parser):
    named = parser.prefill("forecast") + '{"city": "Oslo"}' + ("}\n</tool_call>" if parser is HERMES else "}")
    any_tool = parser.prefill(None) + 'forecast", "arguments": {}' + ("}\n</tool_call>" if parser is HERMES else "}")

    assert [(c["name"], c["args"]) for c in parser.parse(named).tool_calls] == [("forecast", {"city": "Oslo"})]
    assert [(c["name"], c["args"]) for c in parser.parse(any_tool).tool_calls] == [("forecast", {})]


def test_moderation_text_decodes_escaped_arguments():
    text = '<tool_call>{"name": "send", "arguments": {"body": "you \\u0069diot"}}</tool_call>'

    assert HERMES.parse(text).moderation_text() == 'send: {"body": "you idiot"}'


def test_moderation_text_joins_content_and_invalid_calls():
    parsed = HERMES.parse(
        'Hi.\n<tool_call>{"name": "send", "arguments": {"body": "x"}}</tool_call><tool_call>oops</tool_call>'
    )

    assert parsed.moderation_text() == 'Hi.\nsend: {"body": "x"}\n<tool_call>oops</tool_call>'


def test_instructions_show_the_format():
    assert "<tool_call>" in HERMES.instructions()
    assert json.loads(JsonToolCallParser(arguments_key="parameters").instructions().splitlines()[-1])["parameters"]


def test_registry_returns_parsers_by_name():
    assert get_tool_call_parser("hermes").name == "hermes"
    assert get_tool_call_parser("json").name == "json"
    assert get_tool_call_parser(HERMES) is HERMES


def test_registry_rejects_unknown_name():
    with pytest.raises(ConfigurationError, match=r"Unknown tool-call parser 'mistral'\. Registered: hermes, json"):
        get_tool_call_parser("mistral")


class TaggedParser(HermesToolCallParser):
    name = "tagged"


def test_registry_adds_and_replaces_parsers(monkeypatch):
    monkeypatch.setattr(tool_parsers, "_PARSERS", dict(tool_parsers._PARSERS))
    parser = TaggedParser()

    register_tool_call_parser(parser)

    assert get_tool_call_parser("tagged") is parser
    with pytest.raises(ConfigurationError, match="'tagged' is already registered; pass replace=True"):
        register_tool_call_parser(TaggedParser())

    replacement = TaggedParser()
    register_tool_call_parser(replacement, replace=True)
    assert get_tool_call_parser("tagged") is replacement


def test_registry_rejects_non_parser():
    with pytest.raises(ConfigurationError, match="str is not a ToolCallParser"):
        register_tool_call_parser("hermes")  # type: ignore[arg-type]


def test_json_parser_rejects_unknown_arguments_key():
    with pytest.raises(ConfigurationError, match="arguments_key must be 'arguments' or 'parameters', got 'args'"):
        JsonToolCallParser(arguments_key="args")
