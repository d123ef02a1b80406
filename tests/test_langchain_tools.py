"""Tool calling, structured output, agents and model override of GuardedChatModel."""

from __future__ import annotations

import json

import pytest
from langchain.agents import create_agent
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.runnables import RunnableBinding
from langchain_core.tools import tool
from langchain_fakes import ScriptedBackend, flag_word, scripted
from pydantic import BaseModel, Field

from ttsa_guard import AUDIT_KEY, ConfigurationError, GuardedChatModel, chat_model

FAST = {"num_directions": 4, "max_iterations": 3}


class Person(BaseModel):
    """Record attributes of a person."""

    name: str = Field(description="The name of the person.")
    age: int = Field(description="The age of the person.")


@tool
def get_weather(location: str) -> str:
    """Get the weather at a location."""
    return "sunny"


def multiply(a: int, b: int) -> int:
    """Multiply two integers.

    Args:
        a: First factor.
        b: Second factor.
    """
    return a * b


SEARCH_DICT = {
    "type": "function",
    "function": {
        "name": "search",
        "description": "Search the web.",
        "parameters": {"type": "object", "properties": {"query": {"type": "string"}}},
    },
}


def call(tool_name: str, /, **arguments: object) -> str:
    body = json.dumps({"name": tool_name, "arguments": arguments}, ensure_ascii=False)
    return f"<tool_call>\n{body}\n</tool_call>"


def test_bind_tools_accepts_every_tool_form(tiny_backend):
    llm = GuardedChatModel(backend=tiny_backend, scorer=lambda text: 0.0)

    bound = llm.bind_tools([get_weather, Person, multiply, SEARCH_DICT], tool_choice="auto")

    assert isinstance(bound, RunnableBinding)
    assert [tool["function"]["name"] for tool in bound.kwargs["tools"]] == [
        "get_weather",
        "Person",
        "multiply",
        "search",
    ]
    assert bound.kwargs["tools"][2]["function"]["parameters"]["properties"]["a"] == {
        "description": "First factor.",
        "type": "integer",
    }
    assert bound.kwargs["tool_choice"] == "auto"


def test_bind_tools_rejects_unknown_tool_choice(tiny_backend):
    llm = GuardedChatModel(backend=tiny_backend, scorer=lambda text: 0.0)

    with pytest.raises(ConfigurationError, match=r"tool_choice='lookup' is not supported.*get_weather\."):
        llm.bind_tools([get_weather], tool_choice="lookup")


def test_tool_call_is_parsed_into_message(tiny_backend):
    backend = scripted(tiny_backend, "Checking.\n" + call("get_weather", location="Paris"))
    llm = GuardedChatModel(backend=backend, scorer=lambda text: 0.0).bind_tools([get_weather])

    message = llm.invoke("What is the weather in Paris?")

    assert message.content == "Checking."
    assert [(c["name"], c["args"]) for c in message.tool_calls] == [("get_weather", {"location": "Paris"})]
    assert message.response_metadata[AUDIT_KEY]["status"] == "passed"
    assert "You can call these tools:\n- get_weather(location: string)" in backend.prompts[0]


def test_parallel_tool_calls_false_keeps_first_call(tiny_backend):
    backend = scripted(tiny_backend, call("get_weather", location="Paris") + call("get_weather", location="Rome"))
    llm = GuardedChatModel(backend=backend, scorer=lambda text: 0.0)

    both = llm.bind_tools([get_weather]).invoke("Weather in Paris and Rome?")
    first = llm.bind_tools([get_weather], parallel_tool_calls=False).invoke("Weather in Paris and Rome?")

    assert [c["args"]["location"] for c in both.tool_calls] == ["Paris", "Rome"]
    assert [c["args"]["location"] for c in first.tool_calls] == ["Paris"]


def test_forced_tool_choice_prefills_the_prompt(tiny_backend):
    backend = scripted(tiny_backend, call("get_weather", location="Oslo"))
    llm = GuardedChatModel(backend=backend, scorer=lambda text: 0.0).bind_tools(
        [get_weather, multiply], tool_choice="get_weather"
    )

    message = llm.invoke("Weather in Oslo?")

    assert backend.prompts[0].endswith('<|im_start|>assistant\n<tool_call>\n{"name": "get_weather", "arguments": ')
    assert [(c["name"], c["args"]) for c in message.tool_calls] == [("get_weather", {"location": "Oslo"})]
    assert message.usage_metadata["output_tokens"] == len('{"location": "Oslo"}}\n</tool_call>')


def test_tool_choice_none_leaves_tools_out(tiny_backend):
    text = call("get_weather", location="Oslo")
    backend = scripted(tiny_backend, text)
    llm = GuardedChatModel(backend=backend, scorer=lambda text: 0.0).bind_tools([get_weather], tool_choice="none")

    message = llm.invoke("Weather in Oslo?")

    assert "get_weather" not in backend.prompts[0]
    assert message.content == text
    assert message.tool_calls == []


def test_with_structured_output_returns_pydantic_object(tiny_backend):
    backend = scripted(tiny_backend, call("Person", name="Ada Lovelace", age=36))
    llm = GuardedChatModel(backend=backend, scorer=lambda text: 0.0)

    person = llm.with_structured_output(Person).invoke("Ada Lovelace died at 36.")

    assert person == Person(name="Ada Lovelace", age=36)
    assert backend.prompts[0].endswith('<tool_call>\n{"name": "Person", "arguments": ')


def test_with_structured_output_include_raw_reports_parse_error(tiny_backend):
    backend = scripted(tiny_backend, call("Person", name="Ada Lovelace", age="unknown"))
    llm = GuardedChatModel(backend=backend, scorer=lambda text: 0.0)

    result = llm.with_structured_output(Person, include_raw=True).invoke("Ada Lovelace.")

    assert result["parsed"] is None
    assert "age" in str(result["parsing_error"])
    assert result["raw"].tool_calls[0]["args"] == {"name": "Ada Lovelace", "age": "unknown"}


def test_flagged_tool_argument_is_corrected(tiny_backend):
    backend = scripted(tiny_backend, call("send_note", body="you idiot"), call("send_note", body="thank you"))
    llm = GuardedChatModel(backend=backend, scorer=flag_word("idiot"), optimizer=FAST).bind_tools([SEND_NOTE])

    message = llm.invoke("Write my neighbour a note.")

    assert [c["args"] for c in message.tool_calls] == [{"body": "thank you"}]
    audit = message.response_metadata[AUDIT_KEY]
    assert audit["status"] == "corrected"
    assert audit["flagged_before"] is True
    assert "idiot" not in str(message)


def test_escaped_tool_argument_is_still_flagged(tiny_backend):
    escaped = '<tool_call>\n{"name": "send_note", "arguments": {"body": "you \\u0069diot"}}\n</tool_call>'
    backend = scripted(tiny_backend, escaped, call("send_note", body="thank you"))
    llm = GuardedChatModel(backend=backend, scorer=flag_word("idiot"), optimizer=FAST).bind_tools([SEND_NOTE])

    message = llm.invoke("Write my neighbour a note.")

    assert message.response_metadata[AUDIT_KEY]["flagged_before"] is True
    assert [c["args"] for c in message.tool_calls] == [{"body": "thank you"}]


sent_notes: list[str] = []


@tool
def send_note(body: str) -> str:
    """Send a note to the neighbour."""
    sent_notes.append(body)
    return "The note was sent."


SEND_NOTE = send_note


def note_agent_script(prompt: str, steered: bool) -> str:
    """Return a tool call (flagged unless steered) on the first turn, a short reply after the result."""
    if "The note was sent." in prompt:
        return "Done, your note is on its way."

    return call("send_note", body="thank you" if steered else "you idiot")


def test_agent_runs_tool_only_with_corrected_argument(tiny_backend):
    sent_notes.clear()
    backend = ScriptedBackend(tiny_backend, note_agent_script)
    llm = GuardedChatModel(backend=backend, scorer=flag_word("idiot"), optimizer=FAST)
    agent = create_agent(llm, tools=[send_note])

    state = agent.invoke({"messages": [HumanMessage("Write my neighbour a note.")]})

    assert sent_notes == ["thank you"]
    messages = state["messages"]
    assert [type(m).__name__ for m in messages] == ["HumanMessage", "AIMessage", "ToolMessage", "AIMessage"]
    assert messages[1].response_metadata[AUDIT_KEY]["status"] == "corrected"
    assert messages[-1].content == "Done, your note is on its way."
    assert all("idiot" not in str(m.content) for m in messages)
    assert '"body": "thank you"' in backend.prompts[-1], "the corrected call is in the history the model reads"


async def test_agent_runs_async(tiny_backend):
    sent_notes.clear()
    llm = GuardedChatModel(
        backend=ScriptedBackend(tiny_backend, note_agent_script), scorer=flag_word("idiot"), optimizer=FAST
    )
    agent = create_agent(llm, tools=[send_note])

    state = await agent.ainvoke({"messages": [HumanMessage("Write my neighbour a note.")]})

    assert sent_notes == ["thank you"]
    assert state["messages"][-1].content == "Done, your note is on its way."


def test_tool_history_invokes_on_tiny_model(tiny_backend):
    llm = GuardedChatModel(backend=tiny_backend, scorer=lambda text: 0.0, max_tokens=8)
    history = [
        HumanMessage("What is the weather in Paris?"),
        AIMessage(
            "", tool_calls=[{"name": "get_weather", "args": {"location": "Paris"}, "id": "c1", "type": "tool_call"}]
        ),
        ToolMessage("", tool_call_id="c1", name="get_weather", status="error"),
    ]

    message = llm.invoke(history)

    assert isinstance(message, AIMessage)
    prompt = tiny_backend.render(
        [
            {"role": "user", "content": "What is the weather in Paris?"},
            {
                "role": "assistant",
                "content": '<tool_call>\n{"name": "get_weather", "arguments": {"location": "Paris"}}\n</tool_call>',
            },
            {"role": "tool", "content": "", "tool_call_id": "c1", "name": "get_weather"},
        ]
    )
    assert message.usage_metadata["input_tokens"] == tiny_backend.count_tokens(prompt)


def test_model_override_uses_another_backend(tiny_backend, monkeypatch):
    other = scripted(tiny_backend, "From the other model.", name="other-model")
    monkeypatch.setattr(chat_model, "_shared_backend", lambda model, device, dtype: other)
    llm = GuardedChatModel(backend=scripted(tiny_backend, "From the default model."), scorer=lambda text: 0.0)

    default = llm.invoke("Hi")
    overridden = llm.invoke("Hi", model="other-model")

    assert default.content == "From the default model."
    assert overridden.content == "From the other model."
    assert overridden.response_metadata["model_name"] == "other-model"
    assert llm._get_ls_params(model="other-model")["ls_model_name"] == "other-model"
    assert llm.get_guard("other-model") is llm.get_guard("other-model"), "the override guard is built once"
