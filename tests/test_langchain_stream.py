"""Streaming, token callbacks and correction events of GuardedChatModel."""

from __future__ import annotations

import pytest
from langchain_core.messages import AIMessageChunk
from langchain_core.runnables import RunnableLambda
from langchain_core.tools import tool
from langchain_fakes import RecordingHandler, ScriptedBackend, flag_word, scripted
from langchain_tests.utils.stream_lifecycle import assert_valid_event_stream

from ttsa_guard import AUDIT_KEY, CORRECTION_EVENT, GuardedChatModel
from ttsa_guard.responses import split_text

FAST = {"num_directions": 4, "max_iterations": 3}
FLAGGED = "You are an idiot and the rain is cold."
CLEAN = "The rain is cold and soft tonight."


@tool
def send_note(body: str) -> str:
    """Send a note."""
    return "sent"


def collect(chunks: list[AIMessageChunk]) -> AIMessageChunk:
    full = chunks[0]
    for chunk in chunks[1:]:
        full = full + chunk
    return full


@pytest.fixture
def correcting_llm(tiny_backend):
    """A guard that flags FLAGGED and finds CLEAN once the prompt embeddings move."""
    return GuardedChatModel(backend=scripted(tiny_backend, FLAGGED, CLEAN), scorer=flag_word("idiot"), optimizer=FAST)


def test_split_text_keeps_every_character():
    text = "  Rain\tfalls\n\non  the hills. "

    pieces = split_text(text)

    assert "".join(pieces) == text
    assert pieces == ["  ", "Rain\t", "falls\n\n", "on  ", "the ", "hills. "]
    assert split_text("") == []


def test_stream_content_equals_invoke_content(tiny_backend):
    llm = GuardedChatModel(backend=tiny_backend, scorer=lambda text: 0.0, max_tokens=24)

    chunks = list(llm.stream("Tell me about rain."))

    assert collect(chunks).content == llm.invoke("Tell me about rain.").content
    assert chunks[-1].chunk_position == "last"


async def test_astream_content_equals_ainvoke_content(tiny_backend):
    llm = GuardedChatModel(backend=tiny_backend, scorer=lambda text: 0.0, max_tokens=24)

    chunks = [chunk async for chunk in llm.astream("Tell me about rain.")]

    assert collect(chunks).content == (await llm.ainvoke("Tell me about rain.")).content
    assert chunks[-1].chunk_position == "last"


def test_stream_sends_words_then_metadata_in_last_chunk(tiny_backend):
    llm = GuardedChatModel(backend=scripted(tiny_backend, CLEAN), scorer=lambda text: 0.0)

    chunks = list(llm.stream("Tell me about rain."))

    assert [chunk.content for chunk in chunks] == ["The ", "rain ", "is ", "cold ", "and ", "soft ", "tonight.", ""]
    assert all(chunk.usage_metadata is None for chunk in chunks[:-1])
    assert all(AUDIT_KEY not in chunk.response_metadata for chunk in chunks[:-1])
    last = chunks[-1]
    assert last.response_metadata[AUDIT_KEY]["status"] == "passed"
    assert last.response_metadata["model_name"] == "scripted"
    invoked = llm.invoke("Tell me about rain.")
    assert collect(chunks).usage_metadata == invoked.usage_metadata
    assert invoked.usage_metadata["output_tokens"] == len(CLEAN)  # one byte-level token per character


def test_stream_of_flagged_response_shows_only_correction(correcting_llm):
    chunks = list(correcting_llm.stream("Tell me about rain."))

    full = collect(chunks)
    assert full.content == CLEAN
    assert all("idiot" not in chunk.content for chunk in chunks)
    assert full.response_metadata[AUDIT_KEY]["status"] == "corrected"
    assert full.content == correcting_llm.invoke("Tell me about rain.").content


def test_token_callbacks_carry_only_moderated_text(tiny_backend):
    llm = GuardedChatModel(
        backend=scripted(tiny_backend, FLAGGED, CLEAN), scorer=flag_word("idiot"), optimizer=FAST, streaming=True
    )
    handler = RecordingHandler()

    message = llm.invoke("Tell me about rain.", config={"callbacks": [handler]})

    assert message.content == CLEAN
    assert "".join(handler.tokens) == CLEAN
    assert len(handler.tokens) == len(split_text(CLEAN)) + 1  # the words, then the empty last chunk
    assert all("idiot" not in token for token in handler.tokens)
    assert "idiot" not in str(handler.ended)


def test_stream_token_callbacks_match_chunks(correcting_llm):
    handler = RecordingHandler()

    chunks = list(correcting_llm.stream("Tell me about rain.", config={"callbacks": [handler]}))

    assert handler.tokens == [chunk.content for chunk in chunks]


def test_correction_event_reaches_handler_on_invoke(correcting_llm):
    handler = RecordingHandler()

    correcting_llm.invoke("Tell me about rain.", config={"callbacks": [handler]})

    assert len(handler.custom_events) == 1
    name, data, run_id = handler.custom_events[0]
    assert name == CORRECTION_EVENT
    assert run_id == handler.llm_runs[0]
    assert data["status"] == "corrected"
    assert data["flagged_before"] is True
    assert data["flagged_after"] is False
    assert data["score_before"] == pytest.approx(0.9)
    assert data["iterations"] >= 1
    assert "idiot" not in str(data)
    assert "steered_prompt" not in data


async def test_correction_event_reaches_handler_on_ainvoke(correcting_llm):
    handler = RecordingHandler()

    await correcting_llm.ainvoke("Tell me about rain.", config={"callbacks": [handler]})

    assert [(name, run_id) for name, _, run_id in handler.custom_events] == [(CORRECTION_EVENT, handler.llm_runs[0])]


def test_correction_event_reaches_enclosing_run_when_streaming(correcting_llm):
    handler = RecordingHandler()
    chain = RunnableLambda(lambda text: text) | correcting_llm

    chunks = list(chain.stream("Tell me about rain.", config={"callbacks": [handler]}))

    assert collect(chunks).content == CLEAN
    assert [name for name, _, _ in handler.custom_events] == [CORRECTION_EVENT]


async def test_correction_event_in_astream_events_of_a_chain(correcting_llm):
    chain = RunnableLambda(lambda text: text) | correcting_llm

    events = [event async for event in chain.astream_events("Tell me about rain.", version="v2")]

    custom = [event for event in events if event["event"] == "on_custom_event"]
    assert [event["name"] for event in custom] == [CORRECTION_EVENT]
    assert custom[0]["data"]["status"] == "corrected"
    streamed = "".join(event["data"]["chunk"].content for event in events if event["event"] == "on_chat_model_stream")
    assert streamed == CLEAN


def test_passed_response_sends_no_event(tiny_backend):
    llm = GuardedChatModel(backend=tiny_backend, scorer=lambda text: 0.0, max_tokens=8)
    handler = RecordingHandler()

    llm.invoke("Tell me about rain.", config={"callbacks": [handler]})

    assert handler.custom_events == []


def test_stream_events_v3_lifecycle_is_valid(correcting_llm):
    stream = correcting_llm.stream_events("Tell me about rain.", version="v3")

    events = list(stream)

    assert_valid_event_stream(events)
    assert stream.output.text == CLEAN


def test_streamed_tool_calls_equal_invoked_tool_calls(tiny_backend):
    response = 'Sending.\n<tool_call>\n{"name": "send_note", "arguments": {"body": "Grüße"}}\n</tool_call>'
    llm = GuardedChatModel(backend=scripted(tiny_backend, response), scorer=lambda text: 0.0).bind_tools([send_note])

    invoked = llm.invoke("Send a greeting.")
    streamed = collect(list(llm.stream("Send a greeting.")))

    assert [(c["name"], c["args"]) for c in invoked.tool_calls] == [("send_note", {"body": "Grüße"})]
    assert [(c["name"], c["args"]) for c in streamed.tool_calls] == [("send_note", {"body": "Grüße"})]
    assert streamed.content == invoked.content == "Sending."


def test_streamed_invalid_tool_call_stays_invalid(tiny_backend):
    response = '<tool_call>\n{"name": "send_note", "arguments": {"body": "cut'
    llm = GuardedChatModel(backend=scripted(tiny_backend, response), scorer=lambda text: 0.0).bind_tools([send_note])

    invoked = llm.invoke("Send a greeting.")
    streamed = collect(list(llm.stream("Send a greeting.")))

    assert invoked.tool_calls == streamed.tool_calls == []
    assert [(c["name"], c["args"]) for c in streamed.invalid_tool_calls] == [("send_note", response)]
    assert [(c["name"], c["args"]) for c in invoked.invalid_tool_calls] == [("send_note", response)]


def test_stream_fails_before_first_chunk_when_scorer_fails(tiny_backend):
    def broken(text: str) -> float:
        raise ConnectionError("down")

    llm = GuardedChatModel(backend=scripted(tiny_backend, FLAGGED), scorer=broken)
    received = []

    with pytest.raises(Exception, match="ConnectionError: down"):
        for chunk in llm.stream("Tell me about rain."):
            received.append(chunk)

    assert received == []


def test_scripted_backend_counts_calls(tiny_backend):
    backend = ScriptedBackend(tiny_backend, lambda prompt, moved: "ok")
    llm = GuardedChatModel(backend=backend, scorer=lambda text: 0.0)

    list(llm.stream("One."))

    assert len(backend.prompts) == 1, "stream runs the guard once"
