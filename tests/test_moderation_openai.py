"""Unit tests of OpenAIModerationScorer over httpx.MockTransport (no network)."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import httpx
import pytest

from ttsa_guard.errors import (
    ConfigurationError,
    ModerationAPIError,
    ModerationAuthenticationError,
    ModerationRateLimitError,
    ModerationTimeoutError,
    ScorerError,
)
from ttsa_guard.moderation import openai as openai_module
from ttsa_guard.moderation.openai import OpenAIModerationScorer, OpenAIModerationSettings

KEY = "sk-test-secret-0123456789abcdef"
BASE_URL = "http://127.0.0.1/v1"

# Category scores per text, as a server would return them.
SCORES: dict[str, dict[str, float]] = {
    "hello": {"harassment": 0.01, "violence": 0.02},
    "you idiot": {"harassment": 0.3, "violence": 0.6},
    "i will hurt you": {"harassment": 0.4, "violence": 0.95},
}


def result_for(text: str, flagged: bool | None = None) -> dict[str, Any]:
    scores = SCORES.get(text, {"harassment": 0.05, "violence": 0.05})
    verdicts = {name: value >= 0.5 for name, value in scores.items()}
    return {
        "flagged": any(verdicts.values()) if flagged is None else flagged,
        "categories": verdicts,
        "category_scores": scores,
    }


class Recorder:
    """MockTransport handler that records requests and replays scripted responses.

    Each scripted entry is a status code, an ``httpx.Response``, an exception to raise,
    or a callable from the request to a response. After the script runs out, requests
    get a 200 with results from SCORES.
    """

    def __init__(self, script: list[Any] | None = None) -> None:
        self.script = list(script or [])
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.script:
            entry = self.script.pop(0)
            if isinstance(entry, Exception):
                raise entry
            if isinstance(entry, int):
                return httpx.Response(entry, json={"error": {"message": f"status {entry}"}})
            if isinstance(entry, httpx.Response):
                return entry
            return entry(request)

        return httpx.Response(200, json={"results": [result_for(text) for text in self.inputs(-1)]})

    def inputs(self, index: int) -> list[str]:
        return json.loads(self.requests[index].content)["input"]


def make_scorer(recorder: Recorder, **options: Any) -> OpenAIModerationScorer:
    options.setdefault("backoff_jitter", 0.0)
    return OpenAIModerationScorer(
        api_key=KEY, base_url=BASE_URL, transport=httpx.MockTransport(recorder), **options
    )


@pytest.fixture
def waits(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Record the backoff waits instead of sleeping, on the sync and the async path."""
    recorded: list[float] = []

    async def fake_async_sleep(seconds: float) -> None:
        recorded.append(seconds)

    monkeypatch.setattr(openai_module, "_sleep", recorded.append)
    monkeypatch.setattr(openai_module, "_async_sleep", fake_async_sleep)
    return recorded


# Request shape and parsing


def test_request_shape() -> None:
    recorder = Recorder()
    scorer = OpenAIModerationScorer(
        api_key=KEY, base_url=BASE_URL + "/", transport=httpx.MockTransport(recorder), model="text-moderation-007"
    )

    scorer.score(["hello", "you idiot"])

    request = recorder.requests[0]
    assert request.method == "POST"
    assert str(request.url) == "http://127.0.0.1/v1/moderations"
    assert request.headers["Authorization"] == f"Bearer {KEY}"
    assert request.headers["Content-Type"] == "application/json"
    assert json.loads(request.content) == {"model": "text-moderation-007", "input": ["hello", "you idiot"]}


def test_default_model_name() -> None:
    recorder = Recorder()
    make_scorer(recorder).score(["hello"])

    assert json.loads(recorder.requests[0].content)["model"] == "omni-moderation-latest"


def test_score_is_largest_category() -> None:
    [result] = make_scorer(Recorder()).score(["you idiot"])

    assert result.score == pytest.approx(0.6)
    assert result.flagged is True
    assert result.categories == {"harassment": pytest.approx(0.3), "violence": pytest.approx(0.6)}


def test_benign_text_not_flagged() -> None:
    [result] = make_scorer(Recorder()).score(["hello"])

    assert result.score == pytest.approx(0.02)
    assert result.flagged is False


def test_server_flag_counts_below_threshold() -> None:
    recorder = Recorder([httpx.Response(200, json={"results": [result_for("hello", flagged=True)]})])

    [result] = make_scorer(recorder).score(["hello"])

    assert result.score == pytest.approx(0.02)
    assert result.flagged is True


def test_threshold_flags_without_server() -> None:
    recorder = Recorder([httpx.Response(200, json={"results": [result_for("you idiot", flagged=False)]})])

    [result] = make_scorer(recorder, threshold=0.6).score(["you idiot"])

    assert result.flagged is True


def test_category_allow_list() -> None:
    [result] = make_scorer(Recorder(), categories=["harassment"]).score(["you idiot"])

    assert result.score == pytest.approx(0.3)
    assert result.categories == {"harassment": pytest.approx(0.3)}
    # The server flagged violence, which is not counted.
    assert result.flagged is False


def test_allow_list_server_verdict() -> None:
    [result] = make_scorer(Recorder(), categories=["violence"], threshold=0.99).score(["you idiot"])

    assert result.score == pytest.approx(0.6)
    assert result.flagged is True


def test_category_weights_scale_and_clip() -> None:
    scorer = make_scorer(Recorder(), category_weights={"harassment": 3.0})
    [result] = scorer.score(["you idiot"])
    assert result.score == pytest.approx(0.9)

    scorer = make_scorer(Recorder(), category_weights={"violence": 5.0})
    [result] = scorer.score(["you idiot"])
    assert result.score == 1.0

    scorer = make_scorer(Recorder(), category_weights={"violence": 0.0})
    [result] = scorer.score(["you idiot"])
    assert result.score == pytest.approx(0.3)


def test_category_weights_keep_raw_categories() -> None:
    [result] = make_scorer(Recorder(), category_weights={"harassment": 3.0}).score(["you idiot"])

    assert result.categories["harassment"] == pytest.approx(0.3)


def test_category_threshold_flags() -> None:
    recorder = Recorder([httpx.Response(200, json={"results": [result_for("you idiot", flagged=False)]})])

    [result] = make_scorer(recorder, category_thresholds={"harassment": 0.2}).score(["you idiot"])

    assert result.flagged is True


def test_category_thresholds_override_server_flag() -> None:
    scorer = make_scorer(Recorder(), category_thresholds={"violence": 0.9})

    flagged = [result.flagged for result in scorer.score(["you idiot", "i will hurt you"])]

    # Harassment scores 0.3 and 0.4 stay below the default 0.5, and violence 0.6 < 0.9 <= 0.95.
    assert flagged == [False, True]


def test_empty_input_sends_nothing() -> None:
    recorder = Recorder()

    assert make_scorer(recorder).score([]) == []
    assert recorder.requests == []


def test_prompts_ignored() -> None:
    recorder = Recorder()

    [result] = make_scorer(recorder).score(["you idiot"], prompts=["insult me"])

    assert recorder.inputs(0) == ["you idiot"]
    assert result.score == pytest.approx(0.6)


# Dedupe and chunking


def test_identical_texts_sent_once() -> None:
    recorder = Recorder()

    results = make_scorer(recorder).score(["you idiot", "hello", "you idiot", "you idiot"])

    assert len(recorder.requests) == 1
    assert recorder.inputs(0) == ["you idiot", "hello"]
    assert [result.score for result in results] == pytest.approx([0.6, 0.02, 0.6, 0.6])


def test_chunks_of_chunk_size() -> None:
    recorder = Recorder()
    texts = ["hello", "you idiot", "a", "b", "i will hurt you"]

    results = make_scorer(recorder, chunk_size=2).score(texts)

    assert [recorder.inputs(i) for i in range(len(recorder.requests))] == [
        ["hello", "you idiot"],
        ["a", "b"],
        ["i will hurt you"],
    ]
    assert [result.score for result in results] == pytest.approx([0.02, 0.6, 0.05, 0.05, 0.95])


# Retries


def test_retry_after_honored(waits: list[float]) -> None:
    recorder = Recorder([httpx.Response(429, headers={"Retry-After": "2"})])

    [result] = make_scorer(recorder).score(["you idiot"])

    assert waits == [2.0]
    assert len(recorder.requests) == 2
    assert result.score == pytest.approx(0.6)


def test_retry_after_capped(waits: list[float]) -> None:
    recorder = Recorder([httpx.Response(429, headers={"Retry-After": "120"})])

    make_scorer(recorder, max_retry_after=5.0).score(["hello"])

    assert waits == [5.0]


def test_retry_after_date_uses_backoff(waits: list[float]) -> None:
    recorder = Recorder([httpx.Response(503, headers={"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"})])

    make_scorer(recorder, backoff_initial=0.25).score(["hello"])

    assert waits == [0.25]


def test_backoff_doubles_up_to_max(waits: list[float]) -> None:
    recorder = Recorder([500, 502, 503, 504])

    make_scorer(recorder, max_retries=4, backoff_initial=1.0, backoff_max=3.0).score(["hello"])

    assert waits == [1.0, 2.0, 3.0, 3.0]
    assert len(recorder.requests) == 5


def test_backoff_jitter_within_bounds(waits: list[float]) -> None:
    recorder = Recorder([500] * 3)

    make_scorer(recorder, backoff_initial=1.0, backoff_jitter=0.5).score(["hello"])

    for wait, full in zip(waits, [1.0, 2.0, 4.0], strict=True):
        assert full * 0.5 <= wait <= full


def test_retry_on_connection_error(waits: list[float]) -> None:
    recorder = Recorder([httpx.ConnectError("connection refused")])

    [result] = make_scorer(recorder, backoff_initial=0.1).score(["hello"])

    assert waits == [0.1]
    assert result.score == pytest.approx(0.02)


@pytest.mark.parametrize("status", [400, 401, 403, 404])
def test_no_retry_on_client_error(status: int, waits: list[float]) -> None:
    recorder = Recorder([status])

    with pytest.raises(ModerationAPIError):
        make_scorer(recorder).score(["hello"])

    assert len(recorder.requests) == 1
    assert waits == []


def test_max_retries_zero_single_attempt(waits: list[float]) -> None:
    recorder = Recorder([500])

    with pytest.raises(ModerationAPIError):
        make_scorer(recorder, max_retries=0).score(["hello"])

    assert len(recorder.requests) == 1
    assert waits == []


# Error translation


def _timeout(request: httpx.Request) -> httpx.Response:
    raise httpx.ReadTimeout("timed out", request=request)


def _refused(request: httpx.Request) -> httpx.Response:
    raise httpx.ConnectError("connection refused", request=request)


@pytest.mark.parametrize(
    ("reply", "error", "status_code", "cause", "attempts"),
    [
        (400, ModerationAPIError, 400, httpx.HTTPStatusError, 1),
        (401, ModerationAuthenticationError, 401, httpx.HTTPStatusError, 1),
        (403, ModerationAuthenticationError, 403, httpx.HTTPStatusError, 1),
        (404, ModerationAPIError, 404, httpx.HTTPStatusError, 1),
        (422, ModerationAPIError, 422, httpx.HTTPStatusError, 1),
        (451, ModerationAPIError, 451, httpx.HTTPStatusError, 1),
        (429, ModerationRateLimitError, 429, httpx.HTTPStatusError, 3),
        (500, ModerationAPIError, 500, httpx.HTTPStatusError, 3),
        (503, ModerationAPIError, 503, httpx.HTTPStatusError, 3),
        (_timeout, ModerationTimeoutError, None, httpx.ReadTimeout, 3),
        (_refused, ScorerError, None, httpx.ConnectError, 3),
        (lambda r: httpx.Response(200, text="{not json"), ModerationAPIError, 200, json.JSONDecodeError, 1),
        (lambda r: httpx.Response(200, json={"data": []}), ModerationAPIError, 200, type(None), 1),
        (lambda r: httpx.Response(200, json={"results": []}), ModerationAPIError, 200, type(None), 1),
        (lambda r: httpx.Response(200, json={"results": [{"flagged": True}]}), ModerationAPIError, 200, type(None), 1),
        (
            lambda r: httpx.Response(
                200, json={"results": [{"flagged": True, "categories": {}, "category_scores": {"x": "high"}}]}
            ),
            ModerationAPIError,
            200,
            type(None),
            1,
        ),
    ],
)
def test_error_mapping(
    reply: Any, error: type[Exception], status_code: int | None, cause: type, attempts: int, waits: list[float]
) -> None:
    # Every scripted entry repeats, so retryable failures persist through all attempts.
    recorder = Recorder([reply] * 3)

    with pytest.raises(error) as info:
        make_scorer(recorder, max_retries=2).score(["hello"])

    assert type(info.value) is error
    assert getattr(info.value, "status_code", None) == status_code
    assert type(info.value.__cause__) is cause
    assert info.value.scorer == "openai"
    assert len(recorder.requests) == attempts


def test_timeout_error_is_builtin_timeout(waits: list[float]) -> None:
    recorder = Recorder([_timeout])

    with pytest.raises(TimeoutError, match=r"timed out after 0\.5 s, 1 attempt in all"):
        make_scorer(recorder, max_retries=0, timeout=0.5).score(["hello"])


def test_rate_limit_message(waits: list[float]) -> None:
    recorder = Recorder([429, 429])

    with pytest.raises(ModerationRateLimitError, match="HTTP 429 .* on 2 attempts: status 429"):
        make_scorer(recorder, max_retries=1).score(["hello"])


def test_timeout_passed_per_request() -> None:
    seen: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.extensions["timeout"])
        return httpx.Response(200, json={"results": [result_for("hello")]})

    scorer = OpenAIModerationScorer(api_key=KEY, base_url=BASE_URL, transport=httpx.MockTransport(handler), timeout=1.5)
    scorer.score(["hello"])

    assert seen[0] == {"connect": 1.5, "read": 1.5, "write": 1.5, "pool": 1.5}


# Secrets and logging


def test_key_never_leaks(caplog: pytest.LogCaptureFixture, waits: list[float]) -> None:
    caplog.set_level(logging.DEBUG)
    echo = {"error": {"message": f"Incorrect API key provided: {KEY}"}}
    recorder = Recorder(
        [
            httpx.Response(200, json={"results": [result_for("hello")]}),
            httpx.Response(400, json=echo),
            httpx.Response(401, json=echo),
            _refused,
        ]
    )
    scorer = make_scorer(recorder, max_retries=0)
    scorer.score(["hello"])

    errors = []
    for _ in range(3):
        with pytest.raises(ScorerError) as info:
            scorer.score(["hello"])
        errors.append(info.value)

    texts = [repr(scorer), str(scorer.settings), repr(scorer.settings), repr(scorer.api_key), str(scorer.api_key)]
    texts += [str(error) for error in errors] + [repr(error) for error in errors]
    texts += [record.getMessage() for record in caplog.records]
    assert caplog.records
    for text in texts:
        assert KEY not in text
    assert "Incorrect API key provided: **********" in str(errors[0])


def test_one_info_line_per_request(caplog: pytest.LogCaptureFixture, waits: list[float]) -> None:
    caplog.set_level(logging.INFO, logger=openai_module.__name__)
    recorder = Recorder([httpx.Response(429, headers={"Retry-After": "1"})])

    make_scorer(recorder).score(["hello"])

    messages = [record.getMessage() for record in caplog.records if record.name == openai_module.__name__]
    assert messages == [
        "POST /v1/moderations -> 429 (attempt 1 of 4), retrying in 1.00 s",
        "POST /v1/moderations -> 200 (attempt 2 of 4)",
    ]
    assert all(record.levelno == logging.INFO for record in caplog.records if record.name == openai_module.__name__)


# Configuration


def test_missing_key_names_env_var(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)

    with pytest.raises(ConfigurationError, match="OPENAI_API_KEY"):
        OpenAIModerationScorer(base_url=BASE_URL)


def test_empty_key_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "")

    with pytest.raises(ConfigurationError, match="OPENAI_API_KEY"):
        OpenAIModerationScorer(base_url=BASE_URL)


def test_key_and_url_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-env")
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:8123/api/")
    recorder = Recorder()

    OpenAIModerationScorer(transport=httpx.MockTransport(recorder)).score(["hello"])

    assert recorder.requests[0].headers["Authorization"] == "Bearer sk-from-env"
    assert str(recorder.requests[0].url) == "http://127.0.0.1:8123/api/moderations"


def test_default_base_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)

    scorer = OpenAIModerationScorer(api_key=KEY)

    assert scorer.base_url == "https://api.openai.com/v1"


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"chunk_size": 0}, r"chunk_size=0: Input should be greater than or equal to 1"),
        ({"threshold": 0.0}, r"threshold=0\.0: Input should be greater than 0"),
        ({"timeout": float("nan")}, r"timeout=nan"),
        ({"max_retries": -1}, r"max_retries=-1"),
        ({"backoff_jitter": 1.5}, r"backoff_jitter=1\.5: Input should be less than or equal to 1"),
        ({"backoff_initial": 2.0, "backoff_max": 1.0}, r"backoff_max=1\.0 is below backoff_initial=2\.0"),
        ({"category_weights": {"violence": -1.0}}, r"category_weights\.violence=-1\.0"),
        ({"category_thresholds": {"violence": 1.5}}, r"category_thresholds\.violence=1\.5"),
        ({"categories": ["violence"], "category_weights": {"sexual": 2.0}}, r"category_weights names \['sexual'\]"),
        ({"chunksize": 8}, r"chunksize=8: unknown setting"),
    ],
)
def test_invalid_settings_rejected(options: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        OpenAIModerationScorer(api_key=KEY, base_url=BASE_URL, **options)


def test_invalid_base_url_rejected() -> None:
    with pytest.raises(ConfigurationError, match=r"base_url must be an http\(s\) URL .* got 'ftp://127\.0\.0\.1/v1'"):
        OpenAIModerationScorer(api_key=KEY, base_url="ftp://127.0.0.1/v1")


def test_settings_object_and_overrides() -> None:
    settings = OpenAIModerationSettings(chunk_size=4, threshold=0.7)

    scorer = OpenAIModerationScorer(api_key=KEY, base_url=BASE_URL, settings=settings, threshold=0.9)

    assert scorer.settings.chunk_size == 4
    assert scorer.settings.threshold == 0.9


# Clients and async


def test_injected_client_left_open() -> None:
    recorder = Recorder()
    client = httpx.Client(transport=httpx.MockTransport(recorder))

    with OpenAIModerationScorer(api_key=KEY, base_url=BASE_URL, client=client) as scorer:
        scorer.score(["hello"])

    assert len(recorder.requests) == 1
    assert not client.is_closed
    client.close()


def test_owned_client_closed() -> None:
    scorer = make_scorer(Recorder())
    scorer.score(["hello"])
    client = scorer._client
    assert client is not None

    scorer.close()

    assert client.is_closed


async def test_async_scores_and_dedupes() -> None:
    recorder = Recorder()

    async with make_scorer(recorder, chunk_size=1) as scorer:
        results = await scorer.ascore(["you idiot", "hello", "you idiot"])

    assert [recorder.inputs(i) for i in range(len(recorder.requests))] == [["you idiot"], ["hello"]]
    assert [result.score for result in results] == pytest.approx([0.6, 0.02, 0.6])
    assert recorder.requests[0].headers["Authorization"] == f"Bearer {KEY}"


async def test_async_retry_after(waits: list[float]) -> None:
    recorder = Recorder([httpx.Response(429, headers={"Retry-After": "0.75"})])

    [result] = await make_scorer(recorder).ascore(["i will hurt you"])

    assert waits == [0.75]
    assert result.score == pytest.approx(0.95)


async def test_async_error_mapping(waits: list[float]) -> None:
    recorder = Recorder([401])

    with pytest.raises(ModerationAuthenticationError) as info:
        await make_scorer(recorder).ascore(["hello"])

    assert info.value.status_code == 401
    assert len(recorder.requests) == 1


async def test_injected_async_client_left_open() -> None:
    recorder = Recorder()
    client = httpx.AsyncClient(transport=httpx.MockTransport(recorder))

    async with OpenAIModerationScorer(api_key=KEY, base_url=BASE_URL, async_client=client) as scorer:
        await scorer.ascore(["hello"])
        await scorer.ascore(["you idiot"])

    assert len(recorder.requests) == 2
    assert not client.is_closed
    await client.aclose()


def test_async_owned_client_per_call(monkeypatch: pytest.MonkeyPatch) -> None:
    opened: list[httpx.AsyncClient] = []
    original = httpx.AsyncClient

    def recording_client(**kwargs: Any) -> httpx.AsyncClient:
        opened.append(original(**kwargs))
        return opened[-1]

    monkeypatch.setattr(openai_module.httpx, "AsyncClient", recording_client)
    scorer = make_scorer(Recorder())

    # Two event loops in a row: a client bound to the first would fail in the second.
    asyncio.run(scorer.ascore(["hello"]))
    asyncio.run(scorer.ascore(["you idiot"]))

    assert len(opened) == 2
    assert all(client.is_closed for client in opened)


async def test_async_rejects_single_string() -> None:
    with pytest.raises(TypeError, match="single str"):
        await make_scorer(Recorder()).ascore("hello")  # type: ignore[arg-type]
