"""The OpenAI moderation API key never shows in logs, errors, audit records or the model's repr.

A loopback server responds to every request with an error status and echoes the request's
Authorization header in the error message, the worst case for masking.
"""

from __future__ import annotations

import json
import logging
import threading
import traceback
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from ttsa_guard import AUDIT_KEY, GuardedChatModel, ModerationAuthenticationError, OpenAIModerationScorer, ScorerError
from ttsa_guard.backends.transformers import TransformersBackend

# A made-up key; only the loopback server below ever receives it.
KEY = "sk-test-Q7v2Lm9Xp4Rt8Wz1Kc6Nb3Hd5Jf0Gs2"
PREFIX_LENGTH = 16
# The scorer keeps the first 200 characters of a server message; the key starts 16 before that.
STRADDLE_PADDING = 200 - PREFIX_LENGTH - len("Bearer ")
PROMPT = "Tell me about rain."


class EchoServer:
    """Loopback server that responds to each POST with ``status`` and echoes the Authorization header.

    Args:
        status: HTTP status of every response.
        padding: Characters put before the echoed header in the error message.
    """

    def __init__(self, status: int, padding: int = 0) -> None:
        self.status = status
        self.padding = padding
        self.requests = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class names it
                """Keep the test output clean."""

            def do_POST(self) -> None:  # noqa: N802 - the base class dispatches on this name
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                server.requests += 1
                echoed = "." * server.padding + str(self.headers.get("Authorization"))
                body = json.dumps({"error": {"message": echoed, "type": "server_error", "code": None}}).encode()
                self.send_response(server.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    def __enter__(self) -> EchoServer:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)


@pytest.fixture
def echo_server(request: pytest.FixtureRequest) -> Iterator[EchoServer]:
    status, padding = request.param
    with EchoServer(status, padding) as server:
        yield server


def leaked_fragments(text: str) -> list[str]:
    """Return the parts of the key found in ``text``: whole, its first 16 or its last 12 characters."""
    fragments = [KEY, KEY[:PREFIX_LENGTH], KEY[-12:]]
    return [fragment for fragment in fragments if fragment in text]


def exception_texts(error: BaseException) -> str:
    """Join the message, repr and traceback of ``error`` and of every exception chained to it."""
    parts = ["".join(traceback.format_exception(error))]
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        parts.extend([str(current), repr(current), json.dumps(getattr(current, "audit", {}), default=str)])
        current = current.__cause__ or current.__context__

    return "\n".join(parts)


def log_texts(caplog: pytest.LogCaptureFixture) -> str:
    records = [f"{r.name} {r.getMessage()} {r.args!r} {r.exc_text or ''}" for r in caplog.records]
    return caplog.text + "\n".join(records)


def make_scorer(server: EchoServer) -> OpenAIModerationScorer:
    return OpenAIModerationScorer(
        api_key=KEY, base_url=server.base_url, timeout=2.0, max_retries=1, backoff_initial=0.0, backoff_jitter=0.0
    )


def make_llm(backend: TransformersBackend, scorer: Any, policy: str) -> GuardedChatModel:
    return GuardedChatModel(backend=backend, scorer=scorer, max_tokens=6, guard={"scorer_failure_policy": policy})


ERRORS = [(401, 0), (429, 0), (500, 0), (500, STRADDLE_PADDING), (400, STRADDLE_PADDING)]


@pytest.mark.parametrize("echo_server", ERRORS, indirect=True, ids=lambda p: f"{p[0]}-pad{p[1]}")
def test_error_hides_key(
    tiny_backend: TransformersBackend, echo_server: EchoServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)

    with make_scorer(echo_server) as scorer:
        llm = make_llm(tiny_backend, scorer, "raise")
        with pytest.raises(ScorerError) as info:
            llm.invoke(PROMPT)

    assert echo_server.requests >= 1, "the server saw the key and echoed it"
    assert info.value.audit["error"] == type(info.value).__name__
    assert leaked_fragments(exception_texts(info.value)) == []
    assert leaked_fragments(log_texts(caplog)) == []


@pytest.mark.parametrize("echo_server", [(500, STRADDLE_PADDING)], indirect=True)
def test_server_message_kept_masked(tiny_backend: TransformersBackend, echo_server: EchoServer) -> None:
    with make_scorer(echo_server) as scorer:
        with pytest.raises(ScorerError) as info:
            make_llm(tiny_backend, scorer, "raise").invoke(PROMPT)

    # The echoed header is still there, masked, so the redaction ran on the server message.
    assert "Bearer **********" in str(info.value)


@pytest.mark.parametrize("echo_server", [(401, 0)], indirect=True)
def test_auth_error_type(tiny_backend: TransformersBackend, echo_server: EchoServer) -> None:
    with make_scorer(echo_server) as scorer:
        with pytest.raises(ModerationAuthenticationError) as info:
            make_llm(tiny_backend, scorer, "raise").invoke(PROMPT)

    assert info.value.status_code == 401
    assert echo_server.requests == 1, "401 is not retried"


@pytest.mark.parametrize("echo_server", [(401, 0), (500, STRADDLE_PADDING)], indirect=True)
def test_refusal_metadata_hides_key(
    tiny_backend: TransformersBackend, echo_server: EchoServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)

    with make_scorer(echo_server) as scorer:
        llm = make_llm(tiny_backend, scorer, "refuse")
        message = llm.invoke(PROMPT)

    assert message.response_metadata[AUDIT_KEY]["status"] == "refused"
    assert leaked_fragments(json.dumps(message.response_metadata, default=str)) == []
    assert leaked_fragments(repr(message)) == []
    assert leaked_fragments(log_texts(caplog)) == []


@pytest.mark.parametrize("echo_server", [(500, 0)], indirect=True)
def test_model_repr_hides_key(tiny_backend: TransformersBackend, echo_server: EchoServer) -> None:
    with make_scorer(echo_server) as scorer:
        llm = GuardedChatModel(backend=tiny_backend, scorer=scorer, search_scorer=scorer, max_tokens=6)
        with pytest.raises(ScorerError):
            llm.invoke(PROMPT)

        texts = {
            "repr": repr(llm),
            "str": str(llm),
            "model_dump": repr(llm.model_dump()),
            "to_json": json.dumps(llm.to_json(), default=repr),
            "guard scorer": repr(llm.get_guard().scorer),
            "scorer vars": repr(vars(scorer)),
        }

    for name, text in texts.items():
        assert leaked_fragments(text) == [], name


@pytest.mark.parametrize("echo_server", [(500, 0)], indirect=True)
def test_env_key_hidden(
    tiny_backend: TransformersBackend,
    echo_server: EchoServer,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("OPENAI_BASE_URL", echo_server.base_url)
    monkeypatch.setattr("ttsa_guard.moderation.openai._sleep", lambda seconds: None)
    caplog.set_level(logging.DEBUG)
    llm = GuardedChatModel(backend=tiny_backend, scorer="openai", max_tokens=6)

    with pytest.raises(ScorerError) as info:
        llm.invoke(PROMPT)

    assert echo_server.requests == 4, "the default three retries ran against the loopback server"
    assert leaked_fragments(exception_texts(info.value)) == []
    assert leaked_fragments(log_texts(caplog)) == []
    assert leaked_fragments(repr(llm)) == []
    llm.get_guard().scorer.scorer.close()
