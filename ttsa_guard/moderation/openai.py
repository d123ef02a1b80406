"""Scorer for OpenAI-compatible moderation endpoints (``POST {base_url}/moderations``).

The client speaks the OpenAI Moderation API request and response shapes over httpx,
with a synchronous and an asynchronous path. It sends each distinct text once, in
chunks of ``chunk_size``, and retries 429, 5xx and connection failures with
exponential backoff. Errors reach the caller as the most specific
:class:`~ttsa_guard.errors.ScorerError` subclass.

Example::

    with OpenAIModerationScorer(categories=["harassment", "violence"]) as scorer:
        results = scorer.score(["some response"])
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import random
import threading
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import Annotated, Any, Self
from urllib.parse import urlsplit

import httpx
from pydantic import ConfigDict, Field, SecretStr, model_validator

from ttsa_guard.config import _Config
from ttsa_guard.errors import (
    ConfigurationError,
    ModerationAPIError,
    ModerationAuthenticationError,
    ModerationRateLimitError,
    ModerationTimeoutError,
    ScorerError,
)
from ttsa_guard.moderation.base import BaseScorer, ModerationResult

__all__ = ["API_KEY_ENV", "BASE_URL_ENV", "DEFAULT_BASE_URL", "OpenAIModerationScorer", "OpenAIModerationSettings"]

logger = logging.getLogger(__name__)

API_KEY_ENV = "OPENAI_API_KEY"
BASE_URL_ENV = "OPENAI_BASE_URL"
DEFAULT_BASE_URL = "https://api.openai.com/v1"

# Module-level so that tests can replace them and skip the waits.
_sleep = time.sleep
_async_sleep = asyncio.sleep


class OpenAIModerationSettings(_Config):
    """Options of :class:`OpenAIModerationScorer`, apart from the key, the URL and the client."""

    model_config = ConfigDict(allow_inf_nan=False)

    model: str = Field(default="omni-moderation-latest", min_length=1)
    """Moderation model named in each request. Default ``omni-moderation-latest``."""

    threshold: float = Field(default=0.5, gt=0.0, le=1.0)
    """Score at or above which a text is flagged, in (0, 1]. Also the flag threshold of each
    counted category missing from ``category_thresholds``. Default 0.5."""

    categories: list[str] | None = None
    """Categories that count towards the score and the flag, such as ``["harassment",
    "violence"]``. None (default) counts every category in the response."""

    category_weights: dict[str, Annotated[float, Field(ge=0.0)]] = Field(default_factory=dict)
    """Weight per category, each >= 0. The score is the maximum over counted categories of
    weight * category score, clipped to [0, 1]. Unlisted categories weigh 1."""

    category_thresholds: dict[str, Annotated[float, Field(gt=0.0, le=1.0)]] = Field(default_factory=dict)
    """Flag threshold per category, each in (0, 1]. When not empty, a text is flagged when the
    server's score of any counted category reaches that category's threshold (``threshold`` for
    unlisted ones), and the server's own verdict is ignored. When empty (default), a text is
    flagged when the server flags a counted category or when the score reaches ``threshold``."""

    chunk_size: int = Field(default=32, ge=1)
    """Maximum texts per request. Default 32."""

    timeout: float = Field(default=30.0, gt=0.0)
    """Seconds allowed for each request attempt (connect, send and read). Default 30.

    NOTE: httpx applies the timeout to each network operation, so a server that keeps sending
    bytes, each within the timeout, can hold one attempt longer than this."""

    max_retries: int = Field(default=3, ge=0, le=20)
    """Retries after a 429, a 5xx, a timeout or a connection error, so a request makes at most
    ``max_retries + 1`` attempts. Default 3."""

    backoff_initial: float = Field(default=0.5, ge=0.0)
    """Seconds before the first retry. Each later retry waits twice as long. Default 0.5."""

    backoff_max: float = Field(default=8.0, ge=0.0)
    """Maximum seconds of one backoff wait, at least ``backoff_initial``. Default 8."""

    backoff_jitter: float = Field(default=0.5, ge=0.0, le=1.0)
    """Fraction of each backoff wait that is random, in [0, 1]: a wait of d seconds becomes a
    uniform draw from [d * (1 - jitter), d]. Default 0.5. With 0 the waits are deterministic."""

    max_retry_after: float = Field(default=60.0, ge=0.0)
    """Maximum seconds to wait when the server sends ``Retry-After``. Longer values are cut to
    this maximum. Default 60."""

    @model_validator(mode="after")
    def _check_consistency(self) -> Self:
        if self.backoff_max < self.backoff_initial:
            msg = (
                f"backoff_max={self.backoff_max} is below backoff_initial={self.backoff_initial}; "
                "set backoff_max to at least backoff_initial."
            )
            raise ValueError(msg)

        if self.categories is not None:
            for field in ("category_weights", "category_thresholds"):
                unknown = sorted(set(getattr(self, field)) - set(self.categories))
                if unknown:
                    msg = (
                        f"{field} names {unknown}, which are not in categories={self.categories}; "
                        "add them to categories or remove them."
                    )
                    raise ValueError(msg)

        return self


@dataclass(frozen=True)
class _Failure:
    """One failed attempt: a transport error or an error status."""

    cause: Exception
    status_code: int | None = None
    retry_after: float | None = None

    @property
    def retryable(self) -> bool:
        if self.status_code is None:
            return True

        return self.status_code == 429 or self.status_code >= 500

    @property
    def outcome(self) -> str:
        return str(self.status_code) if self.status_code is not None else type(self.cause).__name__


class OpenAIModerationScorer(BaseScorer):
    """Scores texts with an OpenAI-compatible moderation endpoint.

    The API scores each text alone, so the ``prompts`` argument is ignored. Chunks are sent
    one after another on both the synchronous and the asynchronous path.

    Args:
        api_key: API key. Default: the ``OPENAI_API_KEY`` environment variable. Stored as a
            ``SecretStr`` and kept out of logs, error messages and the repr.
        base_url: API root such as ``https://api.openai.com/v1``. Default: the
            ``OPENAI_BASE_URL`` environment variable, else the OpenAI URL.
        client: An ``httpx.Client`` to send synchronous requests with. The scorer does not
            close a client that it did not create.
        async_client: An ``httpx.AsyncClient`` for :meth:`ascore`, never closed by the scorer and
            reused across calls. Without it, each :meth:`ascore` call opens and closes its own
            client, because an async client cannot move between event loops.
        transport: An httpx transport for the clients that the scorer creates, such as
            ``httpx.MockTransport`` in tests. The async path closes it after each call, so pass
            ``client``/``async_client`` to share a real connection pool.
        settings: An :class:`OpenAIModerationSettings` or a mapping of its fields.
        options: Fields of :class:`OpenAIModerationSettings`; they override ``settings``.

    Raises:
        ConfigurationError: The key is missing, the URL is not http(s), or an option is invalid.
    """

    name = "openai"

    def __init__(
        self,
        *,
        api_key: str | SecretStr | None = None,
        base_url: str | None = None,
        client: httpx.Client | None = None,
        async_client: httpx.AsyncClient | None = None,
        transport: httpx.BaseTransport | httpx.AsyncBaseTransport | None = None,
        settings: OpenAIModerationSettings | Mapping[str, Any] | None = None,
        **options: Any,
    ) -> None:
        self.settings = _merge_settings(settings, options)
        self.api_key = _resolve_api_key(api_key)
        self.base_url = _resolve_base_url(base_url)
        self._url = f"{self.base_url}/moderations"
        self._path = urlsplit(self._url).path

        self._client = client
        self._owns_client = client is None
        self._async_client = async_client
        self._transport = transport
        self._client_lock = threading.Lock()
        self._rng = random.Random()

    # Scoring

    def _score(self, texts: list[str], prompts: list[str | None]) -> list[ModerationResult]:
        by_text: dict[str, ModerationResult] = {}
        for chunk in self._chunks(texts):
            by_text.update(zip(chunk, self._post(chunk), strict=True))

        return [by_text[text] for text in texts]

    async def ascore(
        self, texts: Sequence[str], *, prompts: Sequence[str | None] | None = None
    ) -> list[ModerationResult]:
        """Score ``texts`` with non-blocking requests. ``prompts`` is checked, then ignored."""
        texts, prompts = self._check_inputs(texts, prompts)
        if not texts:
            return []

        by_text: dict[str, ModerationResult] = {}
        async with self._async_session() as client:
            for chunk in self._chunks(texts):
                by_text.update(zip(chunk, await self._apost(client, chunk), strict=True))

        return self._check_outputs(texts, [by_text[text] for text in texts])

    def _chunks(self, texts: list[str]) -> list[list[str]]:
        # Identical texts share one result, so each distinct text is sent once.
        unique = list(dict.fromkeys(texts))
        size = self.settings.chunk_size
        return [unique[start : start + size] for start in range(0, len(unique), size)]

    def _post(self, chunk: list[str]) -> list[ModerationResult]:
        client = self._get_client()
        for attempt in range(1, self.settings.max_retries + 2):
            try:
                response = client.post(self._url, **self._request_options(chunk))
            except httpx.TransportError as exc:
                outcome = self._settle(attempt, chunk, exc)
            else:
                outcome = self._settle(attempt, chunk, response)

            if isinstance(outcome, list):
                return outcome

            _sleep(outcome)

        raise AssertionError("unreachable: the last attempt returns or raises")

    async def _apost(self, client: httpx.AsyncClient, chunk: list[str]) -> list[ModerationResult]:
        for attempt in range(1, self.settings.max_retries + 2):
            try:
                response = await client.post(self._url, **self._request_options(chunk))
            except httpx.TransportError as exc:
                outcome = self._settle(attempt, chunk, exc)
            else:
                outcome = self._settle(attempt, chunk, response)

            if isinstance(outcome, list):
                return outcome

            await _async_sleep(outcome)

        raise AssertionError("unreachable: the last attempt returns or raises")

    def _request_options(self, chunk: list[str]) -> dict[str, Any]:
        return {
            "json": {"model": self.settings.model, "input": chunk},
            "headers": {"Authorization": f"Bearer {self.api_key.get_secret_value()}"},
            "timeout": self.settings.timeout,
        }

    def _settle(
        self, attempt: int, chunk: list[str], reply: httpx.Response | httpx.TransportError
    ) -> list[ModerationResult] | float:
        """Log one attempt and return the chunk's results or the seconds to wait before the next.

        Raises:
            ScorerError: The attempt failed and no retry is left, or the response is unusable.
        """
        attempts = self.settings.max_retries + 1
        if isinstance(reply, httpx.Response):
            failure = _status_failure(reply)
            if failure is None:
                self._log_attempt(str(reply.status_code), attempt, attempts, None)
                return self._parse(reply, chunk)
        else:
            failure = _Failure(cause=reply)

        delay = self._retry_delay(failure, attempt, attempts)
        self._log_attempt(failure.outcome, attempt, attempts, delay)
        if delay is None:
            raise self._error_for(failure, attempt) from failure.cause

        return delay

    def _retry_delay(self, failure: _Failure, attempt: int, attempts: int) -> float | None:
        """Return the seconds to wait before the next attempt, or None when there is none."""
        if not failure.retryable or attempt >= attempts:
            return None

        if failure.retry_after is not None:
            return min(failure.retry_after, self.settings.max_retry_after)

        backoff = min(self.settings.backoff_max, self.settings.backoff_initial * 2 ** (attempt - 1))
        return backoff * (1.0 - self.settings.backoff_jitter * self._rng.random())

    def _log_attempt(self, outcome: str, attempt: int, attempts: int, delay: float | None) -> None:
        if delay is None:
            logger.info("POST %s -> %s (attempt %d of %d)", self._path, outcome, attempt, attempts)
        else:
            logger.info(
                "POST %s -> %s (attempt %d of %d), retrying in %.2f s", self._path, outcome, attempt, attempts, delay
            )

    # Errors and parsing

    def _error_for(self, failure: _Failure, attempts: int) -> ScorerError:
        """Translate the last failed attempt into the most specific scorer error."""
        status = failure.status_code
        tries = f"{attempts} attempt{'s' if attempts != 1 else ''}"
        if isinstance(failure.cause, httpx.TimeoutException):
            msg = (
                f"The moderation request to {self._url} timed out after {self.settings.timeout} s, "
                f"{tries} in all. Raise timeout or max_retries, or check that the server is up."
            )
            return ModerationTimeoutError(msg, scorer=self.name)

        if status is None:
            reason = self._redact(f"{type(failure.cause).__name__}: {failure.cause}")
            msg = (
                f"The moderation request to {self._url} failed with {reason}, {tries} in all. "
                "Check base_url, the network and the server."
            )
            return ScorerError(msg, scorer=self.name)

        if status in (401, 403):
            msg = (
                f"The moderation server rejected the API key with HTTP {status}. Check the api_key "
                f"argument or the {API_KEY_ENV} environment variable, and that the key may use "
                f"model {self.settings.model!r}."
            )
            return ModerationAuthenticationError(msg, scorer=self.name, status_code=status)

        detail = self._server_message(failure.cause)
        if status == 429:
            msg = (
                f"The moderation server returned HTTP 429 (rate limit) on {tries}{detail}. Send fewer "
                "requests, raise max_retries, or raise the account's rate limit."
            )
            return ModerationRateLimitError(msg, scorer=self.name, status_code=status)

        if status >= 500:
            msg = f"The moderation server returned HTTP {status} on {tries}{detail}. Retry later."
            return ModerationAPIError(msg, scorer=self.name, status_code=status)

        msg = (
            f"The moderation server rejected the request with HTTP {status}{detail}. Check "
            f"base_url ({self.base_url!r}) and model ({self.settings.model!r})."
        )
        return ModerationAPIError(msg, scorer=self.name, status_code=status)

    def _server_message(self, cause: Exception) -> str:
        """Return ``": <message>"`` from an OpenAI-style error body, or "" when there is none."""
        if not isinstance(cause, httpx.HTTPStatusError):
            return ""

        try:
            message = cause.response.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            return ""

        if not isinstance(message, str) or not message:
            return ""

        # Redact before cutting, so that a key straddling the cut cannot leave a prefix behind.
        return ": " + self._redact(message)[:200]

    def _redact(self, text: str) -> str:
        return text.replace(self.api_key.get_secret_value(), "**********")

    def _parse(self, response: httpx.Response, chunk: list[str]) -> list[ModerationResult]:
        status = response.status_code
        try:
            body = response.json()
        except ValueError as exc:
            msg = f"The moderation server returned HTTP {status} with a body that is not valid JSON."
            raise ModerationAPIError(msg, scorer=self.name, status_code=status) from exc

        results = body.get("results") if isinstance(body, dict) else None
        if not isinstance(results, list):
            msg = f"The moderation response (HTTP {status}) has no 'results' list; is base_url a moderation API?"
            raise ModerationAPIError(msg, scorer=self.name, status_code=status)

        if len(results) != len(chunk):
            msg = f"The moderation server returned {len(results)} results for {len(chunk)} texts."
            raise ModerationAPIError(msg, scorer=self.name, status_code=status)

        return [self._to_result(item, index, status) for index, item in enumerate(results)]

    def _to_result(self, item: Any, index: int, status: int) -> ModerationResult:
        scores = item.get("category_scores") if isinstance(item, dict) else None
        verdicts = item.get("categories", {}) if isinstance(item, dict) else None
        server_flagged = item.get("flagged") if isinstance(item, dict) else None
        if not (isinstance(scores, dict) and isinstance(verdicts, dict) and isinstance(server_flagged, bool)):
            msg = (
                f"Moderation result {index} lacks 'flagged' (bool), 'categories' (object) or "
                "'category_scores' (object)."
            )
            raise ModerationAPIError(msg, scorer=self.name, status_code=status)

        counted: dict[str, float] = {}
        allowed = self.settings.categories
        for category, value in scores.items():
            if allowed is not None and category not in allowed:
                continue

            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                msg = f"Moderation result {index} has score {value!r} for {category!r}; expected a number."
                raise ModerationAPIError(msg, scorer=self.name, status_code=status)

            counted[category] = _clip(float(value))

        weights = self.settings.category_weights
        score = max((_clip(weights.get(name, 1.0) * value) for name, value in counted.items()), default=0.0)
        thresholds = self.settings.category_thresholds
        if thresholds:
            default = self.settings.threshold
            flagged = any(value >= thresholds.get(name, default) for name, value in counted.items())
        else:
            if allowed is None:
                verdict = server_flagged
            else:
                verdict = any(verdicts.get(name) is True for name in counted)
            flagged = verdict or score >= self.settings.threshold

        return ModerationResult(score=score, flagged=flagged, categories=counted)

    # Client life cycle

    def _get_client(self) -> httpx.Client:
        with self._client_lock:
            if self._client is None:
                transport = self._transport if isinstance(self._transport, httpx.BaseTransport) else None
                if self._transport is not None and transport is None:
                    msg = "The transport given is async-only; pass a sync transport or client= for score()."
                    raise ConfigurationError(msg)

                self._client = httpx.Client(transport=transport)

            return self._client

    @asynccontextmanager
    async def _async_session(self) -> AsyncIterator[httpx.AsyncClient]:
        """Yield the injected async client, or a new one that is closed when the call ends.

        An ``httpx.AsyncClient`` stays bound to the event loop that first used it, so an owned
        client lives for one :meth:`ascore` call: later calls may run in another loop.
        """
        if self._async_client is not None:
            yield self._async_client
            return

        transport = self._transport if isinstance(self._transport, httpx.AsyncBaseTransport) else None
        if self._transport is not None and transport is None:
            msg = "The transport given is sync-only; pass an async transport or async_client= for ascore()."
            raise ConfigurationError(msg)

        async with httpx.AsyncClient(transport=transport) as client:
            yield client

    def close(self) -> None:
        """Close the synchronous client if the scorer created it; an injected client stays open."""
        with self._client_lock:
            client = self._client if self._owns_client else None
            if client is not None:
                self._client = None

        if client is not None:
            client.close()

    async def aclose(self) -> None:
        """Close the synchronous client like :meth:`close`; owned async clients close after each call."""
        self.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return (
            f"OpenAIModerationScorer(model={self.settings.model!r}, base_url={self.base_url!r}, "
            f"threshold={self.settings.threshold})"
        )


def _merge_settings(
    settings: OpenAIModerationSettings | Mapping[str, Any] | None, options: Mapping[str, Any]
) -> OpenAIModerationSettings:
    if settings is None:
        base: dict[str, Any] = {}
    elif isinstance(settings, OpenAIModerationSettings):
        base = settings.model_dump(exclude_unset=True)
    elif isinstance(settings, Mapping):
        base = dict(settings)
    else:
        msg = f"settings must be OpenAIModerationSettings or a mapping of its fields, got {type(settings).__name__}."
        raise ConfigurationError(msg)

    return OpenAIModerationSettings(**{**base, **options})


def _resolve_api_key(api_key: str | SecretStr | None) -> SecretStr:
    value = api_key.get_secret_value() if isinstance(api_key, SecretStr) else api_key
    if value is None:
        value = os.environ.get(API_KEY_ENV)

    if not value:
        msg = f"The OpenAI moderation scorer needs an API key: pass api_key= or set the {API_KEY_ENV} environment variable."
        raise ConfigurationError(msg)

    return SecretStr(value)


def _resolve_base_url(base_url: str | None) -> str:
    url = (base_url or os.environ.get(BASE_URL_ENV) or DEFAULT_BASE_URL).rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        msg = f"base_url must be an http(s) URL such as {DEFAULT_BASE_URL!r}, got {url!r}."
        raise ConfigurationError(msg)

    return url


def _status_failure(response: httpx.Response) -> _Failure | None:
    """Return the failure of a response with an error status, or None for a 2xx response."""
    try:
        response.raise_for_status()
    except httpx.HTTPStatusError as exc:
        return _Failure(cause=exc, status_code=response.status_code, retry_after=_retry_after(response))

    return None


def _retry_after(response: httpx.Response) -> float | None:
    """Return the ``Retry-After`` header in seconds, or None when it is missing or an HTTP date."""
    value = response.headers.get("Retry-After")
    if value is None:
        return None

    try:
        seconds = float(value.strip())
    except ValueError:
        return None

    return max(seconds, 0.0) if math.isfinite(seconds) else None


def _clip(value: float) -> float:
    return min(max(value, 0.0), 1.0)
