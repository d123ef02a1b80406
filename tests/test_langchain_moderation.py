"""ModerationRunnable policies and the tool-result moderation middleware."""

from __future__ import annotations

from typing import Annotated

import pytest
from langchain.agents import create_agent
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.runnables import RunnableLambda
from langchain_core.tools import InjectedToolCallId, tool
from langchain_fakes import RecordingHandler, ScriptedBackend, flag_word
from langgraph.types import Command

from ttsa_guard import (
    MODERATION_EVENT,
    MODERATION_KEY,
    ConfigurationError,
    FlaggedContentError,
    GuardedChatModel,
    ModerationRunnable,
    ToolResultModerationMiddleware,
)

NOTICE = "[removed]"
FLAGGED = "the idiot next door"
CLEAN = "the kind neighbour"


def runnable(policy: str) -> ModerationRunnable:
    return ModerationRunnable(flag_word("idiot"), policy=policy, notice=NOTICE)  # type: ignore[arg-type]


@pytest.mark.parametrize(("policy", "expected"), [("replace", NOTICE), ("annotate", FLAGGED)])
def test_flagged_str(policy, expected):
    assert runnable(policy).invoke(FLAGGED) == expected


@pytest.mark.parametrize("policy", ["replace", "annotate", "raise"])
def test_clean_str_passes_every_policy(policy):
    assert runnable(policy).invoke(CLEAN) == CLEAN


def test_raise_policy_raises_typed_error():
    with pytest.raises(FlaggedContentError, match=r"flagged the text \(scorer 'word_filter', score 0\.900\)") as info:
        runnable("raise").invoke(FLAGGED)

    assert info.value.score == pytest.approx(0.9)
    assert info.value.scorer == "word_filter"
    assert isinstance(info.value, ValueError)
    assert "idiot" not in str(info.value)


def test_tool_message_replace_keeps_call_fields():
    message = ToolMessage(FLAGGED, tool_call_id="c1", name="lookup", artifact={"raw": 1})

    moderated = runnable("replace").invoke(message)

    assert isinstance(moderated, ToolMessage)
    assert moderated.content == NOTICE
    assert (moderated.tool_call_id, moderated.name, moderated.artifact) == ("c1", "lookup", {"raw": 1})
    verdict = moderated.response_metadata[MODERATION_KEY]
    assert verdict["flagged"] is True
    assert verdict["action"] == "replaced"
    assert verdict["score"] == pytest.approx(0.9)
    assert message.content == FLAGGED, "the input message is not mutated"


def test_tool_message_annotate_keeps_content():
    moderated = runnable("annotate").invoke(ToolMessage(FLAGGED, tool_call_id="c1"))

    assert moderated.content == FLAGGED
    assert moderated.response_metadata[MODERATION_KEY]["action"] == "annotated"


def test_tool_message_raise_names_the_tool():
    with pytest.raises(FlaggedContentError, match="flagged the ToolMessage from tool 'lookup'"):
        runnable("raise").invoke(ToolMessage(FLAGGED, tool_call_id="c1", name="lookup"))


def test_ai_message_tool_call_arguments_are_judged():
    message = AIMessage(
        "Sending.", tool_calls=[{"name": "send", "args": {"body": FLAGGED}, "id": "c1", "type": "tool_call"}]
    )

    moderated = runnable("replace").invoke(message)

    assert moderated.content == NOTICE
    assert moderated.tool_calls == []


def test_message_list_is_moderated_item_by_item():
    moderated = runnable("replace").invoke([HumanMessage(CLEAN), ToolMessage(FLAGGED, tool_call_id="c1")])

    assert [m.content for m in moderated] == [CLEAN, NOTICE]
    assert [m.response_metadata[MODERATION_KEY]["action"] for m in moderated] == ["passed", "replaced"]


def test_threshold_overrides_scorer_decision():
    strict = ModerationRunnable(lambda text: 0.3, threshold=0.25, notice=NOTICE)
    lenient = ModerationRunnable(lambda text: 0.3, notice=NOTICE)

    assert strict.invoke("anything") == NOTICE
    assert lenient.invoke("anything") == "anything"


async def test_ainvoke_applies_the_same_policies():
    assert await runnable("replace").ainvoke(FLAGGED) == NOTICE
    assert (await runnable("annotate").ainvoke(ToolMessage(FLAGGED, tool_call_id="c1"))).content == FLAGGED
    with pytest.raises(FlaggedContentError):
        await runnable("raise").ainvoke(FLAGGED)


def test_moderation_event_in_a_chain():
    handler = RecordingHandler()
    chain = RunnableLambda(lambda query: FLAGGED) | runnable("annotate")

    output = chain.invoke("who lives next door?", config={"callbacks": [handler]})

    assert output == FLAGGED
    assert len(handler.custom_events) == 1
    name, data, _ = handler.custom_events[0]
    assert name == MODERATION_EVENT
    assert data["policy"] == "annotate"
    assert [verdict["action"] for verdict in data["verdicts"]] == ["annotated"]
    assert "idiot" not in str(data)


def test_invalid_policy_raises():
    with pytest.raises(ConfigurationError, match="policy must be one of 'replace', 'annotate', 'raise', got 'drop'"):
        ModerationRunnable(flag_word("idiot"), policy="drop")  # type: ignore[arg-type]


def test_unsupported_input_raises():
    with pytest.raises(TypeError, match="accepts a str, a message or a list of them, got int"):
        runnable("replace").invoke(42)


@tool
def neighbour_lookup(street: str) -> str:
    """Look up who lives on a street."""
    return FLAGGED


def agent_script(prompt: str, steered: bool) -> str:
    if "<|im_start|>tool\n" in prompt:
        return "Here is what I found."

    return '<tool_call>\n{"name": "neighbour_lookup", "arguments": {"street": "Elm"}}\n</tool_call>'


def agent_with(middleware: ToolResultModerationMiddleware, tiny_backend) -> tuple:
    backend = ScriptedBackend(tiny_backend, agent_script)
    llm = GuardedChatModel(backend=backend, scorer=lambda text: 0.0)
    return create_agent(llm, tools=[neighbour_lookup], middleware=[middleware]), backend


def test_middleware_replaces_flagged_tool_result(tiny_backend):
    agent, backend = agent_with(ToolResultModerationMiddleware(flag_word("idiot"), notice=NOTICE), tiny_backend)

    state = agent.invoke({"messages": [HumanMessage("Who lives on Elm street?")]})

    tool_message = state["messages"][2]
    assert isinstance(tool_message, ToolMessage)
    assert tool_message.content == NOTICE
    assert tool_message.response_metadata[MODERATION_KEY]["action"] == "replaced"
    assert "idiot" not in backend.prompts[-1], "the model never reads the flagged result"
    assert f"<|im_start|>tool\n{NOTICE}<|im_end|>" in backend.prompts[-1]
    assert state["messages"][-1].content == "Here is what I found."


def test_middleware_raise_policy_stops_the_agent(tiny_backend):
    agent, _ = agent_with(ToolResultModerationMiddleware(flag_word("idiot"), policy="raise"), tiny_backend)

    with pytest.raises(FlaggedContentError, match="ToolMessage from tool 'neighbour_lookup'"):
        agent.invoke({"messages": [HumanMessage("Who lives on Elm street?")]})


def test_middleware_skips_tools_not_listed(tiny_backend):
    middleware = ToolResultModerationMiddleware(flag_word("idiot"), notice=NOTICE, tools=["other_tool"])
    agent, backend = agent_with(middleware, tiny_backend)

    state = agent.invoke({"messages": [HumanMessage("Who lives on Elm street?")]})

    assert state["messages"][2].content == FLAGGED
    assert MODERATION_KEY not in state["messages"][2].response_metadata


async def test_middleware_runs_async(tiny_backend):
    agent, backend = agent_with(ToolResultModerationMiddleware(flag_word("idiot"), notice=NOTICE), tiny_backend)

    state = await agent.ainvoke({"messages": [HumanMessage("Who lives on Elm street?")]})

    assert state["messages"][2].content == NOTICE
    assert "idiot" not in backend.prompts[-1]


@tool
def neighbour_command(street: str, tool_call_id: Annotated[str, InjectedToolCallId]) -> Command:
    """Look up who lives on a street, returning a state update."""
    return Command(update={"messages": [ToolMessage(FLAGGED, tool_call_id=tool_call_id, name="neighbour_command")]})


def command_script(prompt: str, steered: bool) -> str:
    if "<|im_start|>tool\n" in prompt:
        return "Here is what I found."

    return '<tool_call>\n{"name": "neighbour_command", "arguments": {"street": "Elm"}}\n</tool_call>'


@pytest.mark.parametrize("use_async", [False, True])
async def test_middleware_moderates_command_updates(tiny_backend, use_async):
    backend = ScriptedBackend(tiny_backend, command_script)
    llm = GuardedChatModel(backend=backend, scorer=lambda text: 0.0)
    middleware = ToolResultModerationMiddleware(flag_word("idiot"), notice=NOTICE)
    agent = create_agent(llm, tools=[neighbour_command], middleware=[middleware])
    request = {"messages": [HumanMessage("Who lives on Elm street?")]}

    state = await agent.ainvoke(request) if use_async else agent.invoke(request)

    assert state["messages"][2].content == NOTICE
    assert "idiot" not in backend.prompts[-1]
