"""Tool histories, forced tool calls and an agent loop on the embedded SmolLM2-135M model.

The standard suite declares tool calling unsupported, because the 135M model cannot fill the
suite's exact arguments. These tests cover what it does do: read tool histories, and open the
forced call by name.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from langchain.agents import create_agent
from langchain.agents.middleware import ModelRequest, ModelResponse, wrap_model_call
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.tools import tool
from langchain_core.utils.function_calling import convert_to_openai_tool

from ttsa_guard import AUDIT_KEY, MODERATION_KEY, GuardedChatModel, HermesToolCallParser, ToolResultModerationMiddleware
from ttsa_guard.messages import to_chat_dicts
from ttsa_guard.tool_prompts import prepare_tool_request

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def short_llm() -> GuardedChatModel:
    """The embedded guard with 24 new tokens: enough for a short call, at half the default cost."""
    llm = GuardedChatModel(max_tokens=24)
    llm.get_guard()
    return llm


@tool
def get_weather(city: str) -> str:
    """Get today's weather forecast for a city.

    Args:
        city: City name, such as Paris.
    """
    return "Sunny, 24 degrees C." if city.strip().lower() == "paris" else f"No forecast for {city!r}."


@tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


CALL = {"name": "add", "args": {"a": 1, "b": 2}, "id": "call_1", "type": "tool_call"}


@pytest.mark.parametrize(
    "result",
    [
        ToolMessage("3", tool_call_id="call_1", name="add"),
        ToolMessage([{"type": "text", "text": "3"}], tool_call_id="call_1", name="add"),
        ToolMessage("Error: missing argument b.", tool_call_id="call_1", name="add", status="error"),
    ],
    ids=["string", "blocks", "error"],
)
def test_tool_history_is_answered(short_llm, result):
    history = [HumanMessage("What is 1 + 2?"), AIMessage("", tool_calls=[CALL]), result]

    message = short_llm.bind_tools([add]).invoke(history)

    assert isinstance(message, AIMessage)
    assert message.response_metadata[AUDIT_KEY]["status"] in ("passed", "corrected")
    backend = short_llm.get_guard().backend
    request = prepare_tool_request(
        to_chat_dicts(history), [convert_to_openai_tool(add)], None, HermesToolCallParser(), backend
    )
    prompt = backend.encode(request.messages)
    assert message.usage_metadata["input_tokens"] == prompt.num_tokens
    assert (
        '<|im_start|>assistant\n<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n</tool_call><|im_end|>'
        in prompt.text
    )
    assert f"<|im_start|>tool\n{result.text}<|im_end|>" in prompt.text


def test_forced_tool_choice_opens_the_named_call(short_llm):
    message = short_llm.bind_tools([get_weather, add], tool_choice="get_weather").invoke(
        "What is the weather in Paris?"
    )

    names = [call["name"] for call in message.tool_calls] + [call["name"] for call in message.invalid_tool_calls]
    assert names[:1] == ["get_weather"]


@wrap_model_call
def force_first_call(request: ModelRequest, handler: Callable[[ModelRequest], ModelResponse]) -> ModelResponse:
    """Force a get_weather call until a tool result is in the conversation."""
    if not any(isinstance(message, ToolMessage) for message in request.messages):
        request = request.override(tool_choice="get_weather")

    return handler(request)


def test_agent_loop_runs_tool_and_answers(short_llm):
    agent = create_agent(
        short_llm,
        tools=[get_weather],
        system_prompt="You are a weather assistant. Call get_weather to look up the weather.",
        middleware=[force_first_call, ToolResultModerationMiddleware("profanity")],
    )

    state = agent.invoke({"messages": [HumanMessage("What is the weather in Paris?")]}, config={"recursion_limit": 8})

    messages = state["messages"]
    assert [type(m).__name__ for m in messages[:3]] == ["HumanMessage", "AIMessage", "ToolMessage"]
    assert messages[1].tool_calls[0]["name"] == "get_weather"
    assert messages[2].response_metadata[MODERATION_KEY]["action"] == "passed"
    assert isinstance(messages[-1], AIMessage)
