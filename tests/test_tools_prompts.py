"""Bound tools in the chat template: tool_choice, tool descriptions and tool histories."""

from __future__ import annotations

import copy
import logging

import pytest
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.tools import tool
from langchain_core.utils.function_calling import convert_to_openai_tool
from langchain_fakes import TOOLS_TEMPLATE
from langchain_tests.unit_tests.chat_models import generate_schema_pydantic

from ttsa_guard import ConfigurationError, HermesToolCallParser
from ttsa_guard.backends.transformers import TransformersBackend
from ttsa_guard.messages import to_chat_dicts
from ttsa_guard.tool_prompts import TemplateSupport, normalize_tool_choice, prepare_tool_request, probe_template

PARSER = HermesToolCallParser()


@tool
def get_weather(location: str) -> str:
    """Get the weather at a location.

    Args:
        location: City name, such as Paris.
    """
    return "sunny"


@tool
def add(a: int, b: int = 0) -> int:
    """Add two integers."""
    return a + b


WEATHER = convert_to_openai_tool(get_weather)
ADD = convert_to_openai_tool(add)

HISTORY = [
    HumanMessage("What is the weather in Paris?"),
    AIMessage(
        "", tool_calls=[{"name": "get_weather", "args": {"location": "Paris"}, "id": "call_1", "type": "tool_call"}]
    ),
    ToolMessage("sunny", tool_call_id="call_1", name="get_weather"),
]


@pytest.fixture(scope="module")
def tools_backend(tiny_model, tiny_tokenizer):
    """The tiny model with a template that renders tools, tool calls and tool results."""
    tokenizer = copy.deepcopy(tiny_tokenizer)
    tokenizer.chat_template = TOOLS_TEMPLATE
    return TransformersBackend(tiny_model, tokenizer, name="tiny-tools")


@pytest.mark.parametrize(
    ("choice", "names", "expected"),
    [
        (None, ["a", "b"], "auto"),
        ("auto", ["a", "b"], "auto"),
        (False, ["a", "b"], "auto"),
        ("none", ["a", "b"], "none"),
        ("any", ["a", "b"], "any"),
        ("required", ["a", "b"], "any"),
        (True, ["a", "b"], "any"),
        ("any", ["a"], "a"),
        ("b", ["a", "b"], "b"),
        ({"type": "function", "function": {"name": "b"}}, ["a", "b"], "b"),
        ({"type": "tool", "name": "a"}, ["a", "b"], "a"),
        ({"type": "any"}, ["a", "b"], "any"),
    ],
)
def test_tool_choice_forms(choice, names, expected):
    assert normalize_tool_choice(choice, names) == expected


@pytest.mark.parametrize("choice", ["c", {"type": "function", "function": {"name": "c"}}, 3])
def test_unknown_tool_choice_raises(choice):
    with pytest.raises(ConfigurationError, match=r"is not supported\. .*name of a bound tool: a, b\."):
        normalize_tool_choice(choice, ["a", "b"])


def test_probe_reads_template_support(tiny_backend, tools_backend):
    assert probe_template(tiny_backend) == TemplateSupport(tools=False, tool_calls=False)
    assert probe_template(tools_backend) == TemplateSupport(tools=True, tool_calls=True)
    assert probe_template(object()) == TemplateSupport(tools=False, tool_calls=False)


def test_tools_without_template_support_go_to_system_prompt(tiny_backend):
    request = prepare_tool_request(
        to_chat_dicts([HumanMessage("Weather in Oslo?")]), [WEATHER, ADD], None, PARSER, tiny_backend
    )

    system = request.messages[0]
    assert system["role"] == "system"
    assert "- get_weather(location: string): Get the weather at a location." in system["content"]
    assert "    location: City name, such as Paris." in system["content"]
    assert "- add(a: integer, b: integer (optional)): Add two integers." in system["content"]
    assert PARSER.instructions() in system["content"]
    assert system["content"].endswith("Call a tool only when it helps to answer; otherwise answer in plain text.")
    assert request.messages[1] == {"role": "user", "content": "Weather in Oslo?"}
    assert request.template_tools is None
    assert request.prefill == ""
    assert request.parser is PARSER


def test_tool_description_extends_existing_system_message(tiny_backend):
    messages = to_chat_dicts([SystemMessage("Be brief."), HumanMessage("Weather in Oslo?")])

    request = prepare_tool_request(messages, [WEATHER], "get_weather", PARSER, tiny_backend)

    assert request.messages[0]["content"].startswith("Be brief.\n\nYou can call these tools:\n")
    assert request.messages[0]["content"].endswith("You must call the tool get_weather.")
    assert len(request.messages) == 2


def test_forced_choice_prefills_a_call(tiny_backend):
    messages = to_chat_dicts([HumanMessage("Weather in Oslo?")])

    named = prepare_tool_request(messages, [WEATHER, ADD], "get_weather", PARSER, tiny_backend)
    any_tool = prepare_tool_request(messages, [WEATHER, ADD], "any", PARSER, tiny_backend)

    assert named.prefill == '<tool_call>\n{"name": "get_weather", "arguments": '
    assert any_tool.prefill == '<tool_call>\n{"name": "'
    assert any_tool.messages[0]["content"].endswith("You must call one of these tools.")
    encoded = tiny_backend.encode(named.messages, prefill=named.prefill)
    assert encoded.text.endswith("<|im_start|>assistant\n" + named.prefill)
    assert encoded.editable_text == "Weather in Oslo?"


def test_choice_none_offers_no_tools(tiny_backend):
    messages = to_chat_dicts([HumanMessage("Weather in Oslo?")])

    request = prepare_tool_request(messages, [WEATHER], "none", PARSER, tiny_backend)

    assert request.messages == messages
    assert request.parser is None
    assert request.moderation_text is None


def test_history_renders_on_template_without_tool_support(tiny_backend):
    request = prepare_tool_request(to_chat_dicts(HISTORY), [WEATHER], None, PARSER, tiny_backend)

    text = tiny_backend.render(request.messages)

    call = '<tool_call>\n{"name": "get_weather", "arguments": {"location": "Paris"}}\n</tool_call>'
    assert f"<|im_start|>assistant\n{call}<|im_end|>\n" in text
    assert "<|im_start|>tool\nsunny<|im_end|>\n" in text
    assert text.endswith("<|im_start|>assistant\n")
    assert tiny_backend.encode(request.messages).editable_text == "What is the weather in Paris?"


def test_history_renders_on_template_with_tool_support(tools_backend):
    request = prepare_tool_request(to_chat_dicts(HISTORY), [WEATHER], None, PARSER, tools_backend)

    text = tools_backend.render(request.messages, tools=request.template_tools)

    assert request.template_tools == [WEATHER]
    assert request.messages == to_chat_dicts(HISTORY), "a template with tool support gets the history unchanged"
    assert '"name": "get_weather"' in text.split("<|im_end|>")[0], "tools are rendered in the system turn"
    assert (
        '<|im_start|>assistant\n<tool_call>\n{"name": "get_weather", "arguments": {"location": "Paris"}}\n</tool_call>'
        in text
    )
    assert "<|im_start|>user\n<tool_response>\nsunny\n</tool_response><|im_end|>" in text
    assert "You can call these tools" not in text
    assert (
        tools_backend.encode(request.messages, tools=request.template_tools).editable_text
        == "What is the weather in Paris?"
    )


def test_history_with_text_and_call_keeps_both(tiny_backend):
    messages = to_chat_dicts([HumanMessage("Hi"), AIMessage("Checking.", tool_calls=HISTORY[1].tool_calls), HISTORY[2]])

    request = prepare_tool_request(messages, None, None, PARSER, tiny_backend)

    assert request.messages[1]["content"].startswith("Checking.\n<tool_call>\n")
    assert "tool_calls" not in request.messages[1]


def test_pydantic_schema_description(tiny_backend):
    schema = convert_to_openai_tool(generate_schema_pydantic())

    request = prepare_tool_request(to_chat_dicts([HumanMessage("Ada is 36.")]), [schema], "any", PARSER, tiny_backend)

    assert "- PersonA(name: string, age: integer): Record attributes of a person." in request.messages[0]["content"]
    assert "    age: The age of the person." in request.messages[0]["content"]
    assert request.prefill.endswith('"name": "PersonA", "arguments": ')


class NoPrefillBackend:
    """A backend whose encode has no prefill argument."""

    name = "no-prefill"

    def encode(self, messages, *, tools=None):
        raise NotImplementedError


def test_backend_without_prefill_falls_back_to_auto(caplog):
    caplog.set_level(logging.WARNING, logger="ttsa_guard.tool_prompts")

    request = prepare_tool_request([{"role": "user", "content": "x"}], [WEATHER], "any", PARSER, NoPrefillBackend())

    assert request.prefill == ""
    assert "backend no-prefill cannot prefill responses" in caplog.text
