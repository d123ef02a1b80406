"""An agent whose guarded model decides the tool calls, offline on the embedded model.

    python examples/agent_tools.py

The agent is built with ``langchain.agents.create_agent`` (``pip install 'ttsa-guard[agents]'``)
and has one tool. Two guards are at work. The guarded model scores its own replies, tool calls
included, and corrects flagged ones before a tool runs. The middleware scores each tool result
before the model reads it.

SmolLM2-135M is a weak tool caller: with ``tool_choice="auto"`` it usually replies without
calling the tool. The script then runs the agent again with the first model call forced to
open a ``get_weather`` call (``tool_choice="get_weather"``), so the model only writes the
arguments. It prints what happened either way and exits 0.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from langchain.agents import create_agent
from langchain.agents.middleware import AgentMiddleware, ModelRequest, ModelResponse
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.tools import tool

from ttsa_guard import AUDIT_KEY, MODERATION_KEY, GuardedChatModel, ToolResultModerationMiddleware

QUESTION = "What is the weather in Paris? Use the get_weather tool."
FORECASTS = {"paris": "Sunny, 24 degrees C, light wind.", "london": "Rain, 15 degrees C."}


@tool
def get_weather(city: str) -> str:
    """Get today's weather forecast for a city.

    Args:
        city: City name, such as Paris.
    """
    return FORECASTS.get(city.strip().lower(), f"No forecast for {city!r}; try Paris or London.")


class ForceFirstToolCall(AgentMiddleware):
    """Sets tool_choice to the tool until a tool result is in the conversation.

    The model must then open a call to the tool, and it still writes the arguments itself.
    """

    def __init__(self, tool_name: str) -> None:
        super().__init__()
        self.tool_name = tool_name

    def wrap_model_call(self, request: ModelRequest, handler: Callable[[ModelRequest], ModelResponse]) -> ModelResponse:
        if not any(isinstance(message, ToolMessage) for message in request.messages):
            request = request.override(tool_choice=self.tool_name)

        return handler(request)


def describe(message: object) -> str:
    """Summarize one agent message in a line."""
    if isinstance(message, AIMessage):
        status = message.response_metadata.get(AUDIT_KEY, {}).get("status", "?")
        line = f"model [{status}]: {message.content!r}"
        if message.tool_calls:
            line += " calls " + ", ".join(f"{call['name']}({call['args']})" for call in message.tool_calls)
        if message.invalid_tool_calls:
            line += f" ({len(message.invalid_tool_calls)} invalid tool calls)"

        return line

    if isinstance(message, ToolMessage):
        verdict = message.response_metadata.get(MODERATION_KEY, {})
        return f"tool {message.name} [{verdict.get('action', 'not moderated')}]: {message.content!r}"

    return f"user: {getattr(message, 'content', message)!r}"


def run_agent(llm: GuardedChatModel, *, force_first_call: bool) -> bool:
    """Run the agent once, print its messages, and return whether a tool call succeeded."""
    middleware: list[AgentMiddleware] = [ToolResultModerationMiddleware("profanity", policy="replace")]
    if force_first_call:
        middleware.append(ForceFirstToolCall("get_weather"))

    agent = create_agent(
        llm,
        tools=[get_weather],
        system_prompt="You are a weather assistant. Call get_weather to look up the weather.",
        middleware=middleware,
    )
    started = time.monotonic()
    state = agent.invoke({"messages": [HumanMessage(QUESTION)]}, config={"recursion_limit": 8})
    print(f"Agent finished in {time.monotonic() - started:.1f} s with {len(state['messages'])} messages:")
    for message in state["messages"]:
        print("  " + describe(message))

    tool_results = [m for m in state["messages"] if isinstance(m, ToolMessage)]
    if not tool_results:
        print("The model answered without calling get_weather; the 135M model often does.")
        return False

    if all(m.status == "error" for m in tool_results):
        print("The model called get_weather, but every call failed; its arguments were wrong.")
        return False

    print("The model called get_weather and answered after reading the result.")
    return True


def main() -> int:
    llm = GuardedChatModel(max_tokens=48)
    print("1. tool_choice='auto': the model decides whether to call the tool.")
    if run_agent(llm, force_first_call=False):
        return 0

    print("\n2. tool_choice='get_weather' until a result arrives: the model writes the call's arguments.")
    run_agent(llm, force_first_call=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
