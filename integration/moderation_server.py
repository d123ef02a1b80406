"""A local OpenAI-compatible moderation server for integration and fault-injection tests.

:class:`ModerationServer` serves ``POST /v1/moderations`` on 127.0.0.1 from a
background thread. It checks the bearer key, scores texts with a fixed word rule
(:func:`moderate`), records every request, and injects faults on demand: a
scripted queue (:meth:`ModerationServer.enqueue`), a mode that applies to every
request (:meth:`ModerationServer.set_mode`), or a seeded random fault rate.

Example, as a pytest fixture::

    @pytest.fixture
    def server():
        with ModerationServer(api_key="sk-test") as running:
            yield running

    def test_retry(server):
        server.enqueue(Fault("rate_limit", retry_after=0.1))
        scorer = OpenAIModerationScorer(api_key="sk-test", base_url=server.base_url)
"""

from __future__ import annotations

import json
import random
import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Literal, Self

__all__ = ["CATEGORIES", "CURSE_WORDS", "FAULT_KINDS", "Fault", "ModerationServer", "RecordedRequest", "moderate"]

FaultKind = Literal["rate_limit", "server_error", "slow", "malformed", "unauthorized", "disconnect"]
FAULT_KINDS: tuple[FaultKind, ...] = ("rate_limit", "server_error", "slow", "malformed", "unauthorized", "disconnect")

CATEGORIES = ("harassment", "hate", "self-harm", "sexual", "violence")
CURSE_WORDS = frozenset({"idiot", "moron", "stupid", "jerk"})
VIOLENT_WORDS = frozenset({"kill", "hurt", "stab"})
HARMFUL_SCORE = 0.9
BASELINE_SCORE = 0.01
PATH = "/v1/moderations"


def moderate(text: str) -> dict[str, float]:
    """Return the category scores that the server reports for ``text``.

    A text containing a word from CURSE_WORDS scores 0.9 for harassment, and one
    containing a word from VIOLENT_WORDS scores 0.9 for violence. Every other category
    scores 0.01. Words are compared in lowercase after stripping punctuation.
    """
    words = {word.strip(".,!?;:'\"") for word in text.lower().split()}
    scores = dict.fromkeys(CATEGORIES, BASELINE_SCORE)
    if words & CURSE_WORDS:
        scores["harassment"] = HARMFUL_SCORE
    if words & VIOLENT_WORDS:
        scores["violence"] = HARMFUL_SCORE

    return scores


@dataclass(frozen=True)
class Fault:
    """A failure that the server injects into one response.

    Attributes:
        kind: ``rate_limit`` (429 with ``Retry-After``), ``server_error`` (``status``),
            ``slow`` (a normal response after ``delay`` seconds), ``malformed`` (200 with a
            truncated JSON body), ``unauthorized`` (401 whatever the key) or ``disconnect``
            (the connection closes without a response).
        status: HTTP status of ``server_error``. Default 500.
        retry_after: ``Retry-After`` header of ``rate_limit`` in seconds; None sends no header.
        delay: Seconds that ``slow`` waits before responding. Default 1.
    """

    kind: FaultKind
    status: int = 500
    retry_after: float | None = 0.0
    delay: float = 1.0


@dataclass(frozen=True)
class RecordedRequest:
    """One request that the server received, with the fault it injected, if any."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any
    fault: FaultKind | None


@dataclass
class _State:
    api_key: str
    fault_rate: float
    fault_kinds: tuple[FaultKind, ...]
    rng: random.Random
    queue: deque[Fault] = field(default_factory=deque)
    mode: Fault | None = None
    requests: list[RecordedRequest] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    stopping: threading.Event = field(default_factory=threading.Event)

    def next_fault(self) -> Fault | None:
        """Pick the fault of the next request: queued first, then the mode, then the random rate."""
        with self.lock:
            if self.queue:
                return self.queue.popleft()

            if self.mode is not None:
                return self.mode

            if self.fault_rate and self.rng.random() < self.fault_rate:
                return Fault(self.rng.choice(self.fault_kinds))

        return None


class ModerationServer:
    """Threaded HTTP server on 127.0.0.1 that mimics the OpenAI moderation endpoint.

    Args:
        api_key: Bearer key that requests must carry. Requests without it get 401.
        fault_rate: Probability in [0, 1] that a request without a queued fault or a mode
            gets a random fault from ``fault_kinds``. Default 0.
        fault_kinds: Faults drawn by ``fault_rate``. Default: all but ``slow``.
        seed: Seed of the random faults; the same seed and arrival order give the same faults.
    """

    def __init__(
        self,
        api_key: str = "sk-test-key",
        *,
        fault_rate: float = 0.0,
        fault_kinds: Sequence[FaultKind] = ("rate_limit", "server_error", "malformed", "disconnect"),
        seed: int = 0,
    ) -> None:
        if not 0.0 <= fault_rate <= 1.0:
            msg = f"fault_rate must be in [0, 1], got {fault_rate!r}."
            raise ValueError(msg)

        unknown = sorted(set(fault_kinds) - set(FAULT_KINDS))
        if unknown or not fault_kinds:
            msg = f"fault_kinds must be a non-empty subset of {FAULT_KINDS}, got {tuple(fault_kinds)!r}."
            raise ValueError(msg)

        self._state = _State(
            api_key=api_key, fault_rate=fault_rate, fault_kinds=tuple(fault_kinds), rng=random.Random(seed)
        )
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        """API root to pass as ``base_url``, such as ``http://127.0.0.1:54321/v1``."""
        if self._server is None:
            msg = "The moderation server is not running; call start() or use it as a context manager."
            raise RuntimeError(msg)

        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/v1"

    @property
    def requests(self) -> list[RecordedRequest]:
        """Copy of the requests received so far, in arrival order."""
        with self._state.lock:
            return list(self._state.requests)

    def enqueue(self, *faults: Fault) -> None:
        """Inject ``faults`` into the next requests, one each, in order."""
        with self._state.lock:
            self._state.queue.extend(faults)

    def set_mode(self, fault: Fault | None) -> None:
        """Inject ``fault`` into every request without a queued fault. None ends the mode."""
        with self._state.lock:
            self._state.mode = fault

    def reset(self) -> None:
        """Forget recorded requests, queued faults and the mode."""
        with self._state.lock:
            self._state.requests.clear()
            self._state.queue.clear()
            self._state.mode = None

    def start(self) -> None:
        """Bind a free port on 127.0.0.1 and serve from a daemon thread."""
        if self._server is not None:
            return

        handler = type("_BoundHandler", (_Handler,), {"state": self._state})
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        # A slow handler must not hold up stop(), because the test has its result by then.
        server.daemon_threads = True
        server.block_on_close = False
        self._state.stopping.clear()
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="moderation-server", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop serving, wake slow handlers and close the socket."""
        if self._server is None:
            return

        self._state.stopping.set()
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None
        self._thread = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body leave in separate writes. Without TCP_NODELAY, delayed ACKs held each
    # response about 40 ms on Linux loopback when these tests were measured.
    disable_nagle_algorithm = True
    state: _State

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class names it
        """Keep the test output clean; the server records requests instead."""

    def do_GET(self) -> None:  # noqa: N802 - the base class dispatches on this name
        self._record(None, None)
        self._send_json(405, _error("Method not allowed; use POST.", "invalid_request_error"))

    def do_POST(self) -> None:  # noqa: N802 - the base class dispatches on this name
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            body: Any = json.loads(raw)
        except ValueError:
            body = None

        fault = self.state.next_fault() if self.path == PATH else None
        self._record(body, fault)
        if self.path != PATH:
            self._send_json(404, _error(f"No route {self.path}.", "invalid_request_error"))
            return

        if fault is not None and fault.kind != "slow":
            self._send_fault(fault)
            return

        if fault is not None and self.state.stopping.wait(fault.delay):
            return

        if self.headers.get("Authorization") != f"Bearer {self.state.api_key}":
            self._send_json(401, _error("Incorrect API key provided.", "invalid_request_error", "invalid_api_key"))
            return

        texts = body.get("input") if isinstance(body, dict) else None
        if isinstance(texts, str):
            texts = [texts]
        if not isinstance(texts, list) or not texts or not all(isinstance(text, str) for text in texts):
            self._send_json(400, _error("'input' must be a string or a non-empty list of strings.", "invalid_request_error"))
            return

        model = body.get("model", "omni-moderation-latest")
        self._send_json(200, {"id": f"modr-{len(self.state.requests)}", "model": model, "results": [_result(t) for t in texts]})

    def _record(self, body: Any, fault: Fault | None) -> None:
        request = RecordedRequest(
            method=self.command,
            path=self.path,
            headers=dict(self.headers.items()),
            body=body,
            fault=fault.kind if fault is not None else None,
        )
        with self.state.lock:
            self.state.requests.append(request)

    def _send_fault(self, fault: Fault) -> None:
        if fault.kind == "rate_limit":
            headers = {} if fault.retry_after is None else {"Retry-After": f"{fault.retry_after:g}"}
            self._send_json(429, _error("Rate limit reached.", "rate_limit_error"), headers)
        elif fault.kind == "server_error":
            self._send_json(fault.status, _error("The server had an error.", "server_error"))
        elif fault.kind == "malformed":
            self._send_bytes(200, b'{"results": [{"flagged": tru', "application/json")
        elif fault.kind == "unauthorized":
            self._send_json(401, _error("Incorrect API key provided.", "invalid_request_error", "invalid_api_key"))
        elif fault.kind == "disconnect":
            self.close_connection = True

    def _send_json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        self._send_bytes(status, json.dumps(payload).encode(), "application/json", headers)

    def _send_bytes(self, status: int, data: bytes, content_type: str, headers: dict[str, str] | None = None) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)
        except OSError:
            # The client gave up first, after a timeout in a slow fault, so no response is needed.
            self.close_connection = True


def _result(text: str) -> dict[str, Any]:
    scores = moderate(text)
    verdicts = {category: score >= 0.5 for category, score in scores.items()}
    return {
        "flagged": any(verdicts.values()),
        "categories": verdicts,
        "category_scores": scores,
        "category_applied_input_types": {category: ["text"] for category in scores},
    }


def _error(message: str, kind: str, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}
