"""Guarded calls through a moderation server that fails at random: nothing unmoderated gets out.

The loopback server from ``moderation_server.py`` responds to 30% of requests, drawn with a
fixed seed, with a 429, a 500, a slow response past the client timeout, a truncated JSON body or a
dropped connection. Every guarded call must then either return a text that the server scored
and its rule does not flag, or fail under the scorer failure policy with a ScorerError.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch
from moderation_server import HARMFUL_SCORE, ModerationServer, moderate

from ttsa_guard import (
    AUDIT_KEY,
    GenerationConfig,
    GuardedChatModel,
    ModerationAPIError,
    ModerationAuthenticationError,
    ModerationRateLimitError,
    ModerationTimeoutError,
    OpenAIModerationScorer,
    ScorerError,
    TransformersBackend,
)
from ttsa_guard.backends.base import EncodedPrompt, Generation

KEY = "sk-test-fault-injection"
REFUSAL = "No can do."
CALLS = 40
FAULT_RATE = 0.3
FAULT_KINDS = ("rate_limit", "server_error", "slow", "malformed", "disconnect")
SCORER_ERRORS = {
    cls.__name__
    for cls in (ScorerError, ModerationAPIError, ModerationAuthenticationError, ModerationRateLimitError, ModerationTimeoutError)
}
# Each generated token becomes one of these words; two of them trip the server's rule.
WORDS = ("rain", "cloud", "river", "idiot", "stone", "wind", "apple", "stab", "light", "green", "music", "bread")
PROMPTS = [f"Tell me about {WORDS[i % 12]} and {WORDS[(i * 5 + 1) % 12]}, take {i}." for i in range(CALLS)]


def load_tiny_models() -> ModuleType:
    """Import the tiny model builders of the unit tests under a name of their own."""
    path = Path(__file__).resolve().parents[1] / "tests" / "conftest.py"
    spec = importlib.util.spec_from_file_location("ttsa_guard_tiny_models", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class WordBackend:
    """The tiny random model with each generated token read as a word from WORDS.

    Responses then contain words that the server's rule flags for some prompts and not for
    others, so guarded calls pass, get corrected or get refused like on a real model.
    """

    def __init__(self, inner: TransformersBackend) -> None:
        self.inner = inner
        self.name = "tiny-llama-words"

    @property
    def context_length(self) -> int | None:
        return self.inner.context_length

    def encode(
        self, messages: Sequence[Mapping[str, Any]], *, tools: Sequence[Mapping[str, Any]] | None = None
    ) -> EncodedPrompt:
        return self.inner.encode(messages, tools=tools)

    def generate(self, prompt: EncodedPrompt, editable: torch.Tensor | None, config: GenerationConfig) -> list[Generation]:
        generations = self.inner.generate(prompt, editable, config)
        return [dataclasses.replace(g, text=" ".join(WORDS[i % len(WORDS)] for i in g.token_ids)) for g in generations]

    def count_tokens(self, text: str) -> int:
        return self.inner.count_tokens(text)

    def nearest_tokens(self, editable: torch.Tensor) -> str:
        return self.inner.nearest_tokens(editable)


@pytest.fixture(scope="module")
def word_backend() -> WordBackend:
    tiny = load_tiny_models()
    tokenizer = tiny.build_tiny_tokenizer()
    model = tiny.build_tiny_model(tokenizer)
    # Sharpened attention makes the response depend on the prompt, not only on the template.
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.q_proj.weight.mul_(32.0)
            layer.self_attn.k_proj.weight.mul_(32.0)

    return WordBackend(TransformersBackend(model, tokenizer, name="tiny-llama-sharp"))


@pytest.fixture
def faulty_server() -> Iterator[ModerationServer]:
    with ModerationServer(api_key=KEY, fault_rate=FAULT_RATE, fault_kinds=FAULT_KINDS, seed=11) as server:
        yield server


def rule_flags(text: str) -> bool:
    return max(moderate(text).values()) >= HARMFUL_SCORE


def scored_by_server(server: ModerationServer) -> set[str]:
    """Texts of every request that the server scored, because it injected no fault."""
    texts: set[str] = set()
    for request in server.requests:
        if request.fault is None and isinstance(request.body, dict):
            texts.update(request.body.get("input") or [])

    return texts


@pytest.mark.parametrize("policy", ["raise", "refuse"])
def test_faults_never_leak(word_backend: WordBackend, faulty_server: ModerationServer, policy: str) -> None:
    counts: Counter[str] = Counter()
    scorer = OpenAIModerationScorer(
        api_key=KEY,
        base_url=faulty_server.base_url,
        timeout=0.25,
        max_retries=2,
        backoff_initial=0.01,
        backoff_max=0.05,
        max_retry_after=0.1,
    )
    with scorer:
        llm = GuardedChatModel(
            backend=word_backend,
            scorer=scorer,
            max_tokens=3,
            optimizer={"num_directions": 4, "max_iterations": 6},
            guard={"scorer_failure_policy": policy, "refusal_text": REFUSAL},
        )
        for prompt in PROMPTS:
            try:
                message = llm.invoke(prompt)
            except ScorerError:
                counts["failed"] += 1
                continue

            audit = message.response_metadata[AUDIT_KEY]
            if message.content == REFUSAL and audit["error"] in SCORER_ERRORS:
                counts["failed"] += 1
            elif message.content == REFUSAL and audit["stop_reason"] == "max_iterations":
                counts["unresolved"] += 1
            elif message.content in scored_by_server(faulty_server) and not rule_flags(str(message.content)):
                counts["completed"] += 1
                counts["corrected"] += audit["status"] == "corrected"
            else:
                counts["leaked"] += 1

    faults = Counter(request.fault or "none" for request in faulty_server.requests)
    print(f"\npolicy={policy} calls={CALLS} {dict(counts)} requests={dict(faults)}")
    assert counts["leaked"] == 0
    assert counts["completed"] + counts["failed"] + counts["unresolved"] == CALLS
    assert counts["failed"] > 0, "the injected faults reached the guard"
    assert counts["corrected"] > 0, "some flagged responses were corrected despite the faults"
