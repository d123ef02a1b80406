"""OpenAIModerationScorer against a real HTTP server on 127.0.0.1, sync and async."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from moderation_server import HARMFUL_SCORE, Fault, ModerationServer, moderate

from ttsa_guard.errors import (
    ModerationAPIError,
    ModerationAuthenticationError,
    ModerationTimeoutError,
    ScorerError,
)
from ttsa_guard.moderation import ModerationResult, OpenAIModerationScorer

KEY = "sk-integration-key-42"
MODES = ["sync", "async"]


@pytest.fixture
def server() -> Iterator[ModerationServer]:
    with ModerationServer(api_key=KEY) as running:
        yield running


def make_scorer(server: ModerationServer, **options: Any) -> OpenAIModerationScorer:
    settings: dict[str, Any] = {
        "timeout": 0.5,
        "max_retries": 2,
        "backoff_initial": 0.01,
        "backoff_max": 0.05,
        "max_retry_after": 1.0,
    }
    settings.update(options)
    api_key = settings.pop("api_key", KEY)
    return OpenAIModerationScorer(api_key=api_key, base_url=server.base_url, **settings)


async def score(scorer: OpenAIModerationScorer, texts: Sequence[str], mode: str) -> list[ModerationResult]:
    """Score through the sync or the async path, closing the scorer's clients afterwards."""
    if mode == "sync":
        with scorer:
            return scorer.score(texts)

    async with scorer:
        return await scorer.ascore(texts)


@pytest.mark.parametrize("mode", MODES)
async def test_success(server: ModerationServer, mode: str) -> None:
    texts = ["have a nice day", "you idiot", "I will hurt you", "you idiot"]

    results = await score(make_scorer(server), texts, mode)

    assert [result.score for result in results] == pytest.approx([0.01, HARMFUL_SCORE, HARMFUL_SCORE, HARMFUL_SCORE])
    assert [result.flagged for result in results] == [False, True, True, True]
    assert results[1].categories == pytest.approx(moderate("you idiot"))
    [request] = server.requests
    assert request.path == "/v1/moderations"
    assert request.headers["Authorization"] == f"Bearer {KEY}"
    assert request.body == {"model": "omni-moderation-latest", "input": texts[:3]}


@pytest.mark.parametrize("mode", MODES)
async def test_chunks_over_http(server: ModerationServer, mode: str) -> None:
    texts = [f"text {i}" for i in range(5)]

    results = await score(make_scorer(server, chunk_size=2), texts, mode)

    assert len(results) == 5
    assert [request.body["input"] for request in server.requests] == [texts[0:2], texts[2:4], texts[4:5]]


@pytest.mark.parametrize("mode", MODES)
async def test_rate_limit_then_success(server: ModerationServer, mode: str) -> None:
    server.enqueue(Fault("rate_limit", retry_after=0.2))

    started = time.monotonic()
    [result] = await score(make_scorer(server), ["you moron"], mode)
    elapsed = time.monotonic() - started

    assert result.score == pytest.approx(HARMFUL_SCORE)
    assert [request.fault for request in server.requests] == ["rate_limit", None]
    # The client waited for Retry-After, not for its 0.01 s backoff.
    assert elapsed >= 0.2


@pytest.mark.parametrize("mode", MODES)
async def test_server_error_then_success(server: ModerationServer, mode: str) -> None:
    server.enqueue(Fault("server_error", status=500))

    [result] = await score(make_scorer(server), ["hello"], mode)

    assert result.flagged is False
    assert [request.fault for request in server.requests] == ["server_error", None]


@pytest.mark.parametrize("mode", MODES)
async def test_persistent_server_error(server: ModerationServer, mode: str) -> None:
    server.set_mode(Fault("server_error", status=503))

    with pytest.raises(ModerationAPIError, match="HTTP 503 on 3 attempts") as info:
        await score(make_scorer(server, max_retries=2), ["hello"], mode)

    assert info.value.status_code == 503
    assert len(server.requests) == 3


@pytest.mark.parametrize("mode", MODES)
async def test_slow_answer_times_out(server: ModerationServer, mode: str) -> None:
    server.set_mode(Fault("slow", delay=2.0))

    with pytest.raises(ModerationTimeoutError, match="timed out after 0.2 s, 2 attempts in all"):
        await score(make_scorer(server, timeout=0.2, max_retries=1), ["hello"], mode)

    assert len(server.requests) == 2


@pytest.mark.parametrize("mode", MODES)
async def test_slow_once_then_success(server: ModerationServer, mode: str) -> None:
    server.enqueue(Fault("slow", delay=2.0))

    [result] = await score(make_scorer(server, timeout=0.2), ["stab"], mode)

    assert result.categories["violence"] == pytest.approx(HARMFUL_SCORE)
    assert len(server.requests) == 2


@pytest.mark.parametrize("mode", MODES)
async def test_malformed_json(server: ModerationServer, mode: str) -> None:
    server.enqueue(Fault("malformed"))

    with pytest.raises(ModerationAPIError, match="not valid JSON") as info:
        await score(make_scorer(server), ["hello"], mode)

    assert info.value.status_code == 200
    assert len(server.requests) == 1


@pytest.mark.parametrize("mode", MODES)
async def test_wrong_key_not_retried(server: ModerationServer, mode: str) -> None:
    with pytest.raises(ModerationAuthenticationError) as info:
        await score(make_scorer(server, api_key="sk-wrong"), ["hello"], mode)

    assert info.value.status_code == 401
    assert len(server.requests) == 1
    assert "sk-wrong" not in str(info.value)


@pytest.mark.parametrize("mode", MODES)
async def test_unauthorized_fault_not_retried(server: ModerationServer, mode: str) -> None:
    server.set_mode(Fault("unauthorized"))

    with pytest.raises(ModerationAuthenticationError):
        await score(make_scorer(server), ["hello"], mode)

    assert len(server.requests) == 1


@pytest.mark.parametrize("mode", MODES)
async def test_disconnect_then_success(server: ModerationServer, mode: str) -> None:
    server.enqueue(Fault("disconnect"))

    [result] = await score(make_scorer(server), ["jerk"], mode)

    assert result.flagged is True
    assert [request.fault for request in server.requests] == ["disconnect", None]


@pytest.mark.parametrize("mode", MODES)
async def test_persistent_disconnect(server: ModerationServer, mode: str) -> None:
    server.set_mode(Fault("disconnect"))

    with pytest.raises(ScorerError, match="failed with RemoteProtocolError: .*, 2 attempts in all") as info:
        await score(make_scorer(server, max_retries=1), ["hello"], mode)

    assert type(info.value) is ScorerError
    assert len(server.requests) == 2


def test_async_across_event_loops(server: ModerationServer) -> None:
    scorer = make_scorer(server)

    first = asyncio.run(scorer.ascore(["you idiot"]))
    second = asyncio.run(scorer.ascore(["hello"]))

    assert first[0].flagged is True
    assert second[0].flagged is False
    assert len(server.requests) == 2


def test_random_faults_reproducible() -> None:
    def fault_sequence() -> list[str | None]:
        with ModerationServer(api_key=KEY, fault_rate=0.5, seed=7, fault_kinds=["rate_limit", "server_error"]) as srv:
            with make_scorer(srv, chunk_size=1, max_retries=10, max_retry_after=0.0) as scorer:
                results = scorer.score([f"idiot {i}" for i in range(6)] + ["hello"])
            assert [result.flagged for result in results] == [True] * 6 + [False]
            return [request.fault for request in srv.requests]

    first = fault_sequence()

    assert first == fault_sequence()
    assert {"rate_limit", "server_error"} <= set(first)
    assert first.count(None) == 7


def test_reset_clears_state(server: ModerationServer) -> None:
    server.enqueue(Fault("server_error"))
    server.set_mode(Fault("unauthorized"))
    with make_scorer(server, max_retries=0) as scorer:
        with pytest.raises(ModerationAPIError):
            scorer.score(["hello"])

        server.reset()

        assert server.requests == []
        assert scorer.score(["hello"])[0].flagged is False
