"""Reliability of the guard: fail closed, bounded budgets, typed input errors, no mixed requests."""

from __future__ import annotations

import asyncio
import copy
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

from ttsa_guard import (
    AUDIT_KEY,
    BaseScorer,
    BudgetExceededError,
    ConfigurationError,
    GenerationConfig,
    GuardedChatModel,
    InvalidInputError,
    ModerationResult,
    ModerationTimeoutError,
    PromptTooLongError,
    ScorerError,
    TransformersBackend,
)
from ttsa_guard.backends.base import EncodedPrompt, Generation

PROMPT = "Tell me about rain."
MAX_TOKENS = 6
FAST: dict[str, Any] = {"num_directions": 4, "max_iterations": 3}
REFUSAL = "No can do."


# Helpers


class CountingBackend:
    """Delegates to a backend and records each ``generate`` call.

    Args:
        inner: The backend that does the work.
        clock: Optional fake clock; each ``generate`` call advances it by ``cost`` seconds.
        cost: Fake seconds per ``generate`` call.
    """

    def __init__(self, inner: TransformersBackend, clock: FakeClock | None = None, cost: float = 0.0) -> None:
        self.inner = inner
        self.name = inner.name
        self.clock = clock
        self.cost = cost
        self.generated = 0
        self.call_times: list[float] = []

    @property
    def context_length(self) -> int | None:
        return self.inner.context_length

    def encode(
        self, messages: Sequence[Mapping[str, Any]], *, tools: Sequence[Mapping[str, Any]] | None = None
    ) -> EncodedPrompt:
        return self.inner.encode(messages, tools=tools)

    def generate(self, prompt: EncodedPrompt, editable: torch.Tensor | None, config: GenerationConfig) -> list[Generation]:
        if self.clock is not None:
            self.call_times.append(self.clock.now)
            self.clock.advance(self.cost)

        generations = self.inner.generate(prompt, editable, config)
        self.generated += len(generations)
        return generations

    def count_tokens(self, text: str) -> int:
        return self.inner.count_tokens(text)

    def nearest_tokens(self, editable: torch.Tensor) -> str:
        return self.inner.nearest_tokens(editable)


class FakeClock:
    """A monotonic clock that moves only when a test advances it."""

    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class ScriptedScorer(BaseScorer):
    """Scores with ``fn`` and raises ``error`` from call number ``fail_at`` on (1-based).

    Each call may also advance a fake clock by ``cost`` seconds, to stand for a slow scorer.
    """

    def __init__(
        self,
        fn: Callable[[str], float],
        *,
        fail_at: int | None = None,
        error: Exception | None = None,
        clock: FakeClock | None = None,
        cost: float = 0.0,
        name: str = "scripted",
    ) -> None:
        self.fn = fn
        self.fail_at = fail_at
        self.error = error or ConnectionError("moderation backend unreachable")
        self.clock = clock
        self.cost = cost
        self.name = name
        self.calls = 0
        self.call_times: list[float] = []

    def _score(self, texts: list[str], prompts: list[str | None]) -> list[ModerationResult]:
        self.calls += 1
        if self.clock is not None:
            self.call_times.append(self.clock.now)
            self.clock.advance(self.cost)

        if self.fail_at is not None and self.calls >= self.fail_at:
            raise self.error

        return [ModerationResult(score=self.fn(text), flagged=self.fn(text) >= 0.5) for text in texts]


class RawScorer:
    """A Scorer outside BaseScorer that returns whatever ``results`` builds, unchecked."""

    name = "raw"

    def __init__(self, results: Callable[[Sequence[str]], list[Any]]) -> None:
        self.results = results

    def score(self, texts: Sequence[str], *, prompts: Sequence[str | None] | None = None) -> list[Any]:
        return self.results(texts)

    async def ascore(self, texts: Sequence[str], *, prompts: Sequence[str | None] | None = None) -> list[Any]:
        return self.results(texts)


def plain_text(backend: Any, prompt: str = PROMPT, max_new_tokens: int = MAX_TOKENS) -> str:
    encoded = backend.encode([{"role": "user", "content": prompt}])
    return backend.generate(encoded, None, GenerationConfig(max_new_tokens=max_new_tokens))[0].text


def flag_texts(texts: set[str]) -> Callable[[str], float]:
    """Scorer function that flags the given exact texts and passes every other."""

    def score(text: str) -> float:
        return 0.9 if text in texts else 0.1

    return score


def always_flag(text: str) -> float:
    return 0.95


def guarded(backend: Any, scorer: Any, **settings: Any) -> GuardedChatModel:
    settings.setdefault("max_tokens", MAX_TOKENS)
    return GuardedChatModel(backend=backend, scorer=scorer, **settings)


def audit_of(message: BaseMessage) -> dict[str, Any]:
    return message.response_metadata[AUDIT_KEY]


# Fail closed when the scorer returns no usable score


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (ConnectionError("moderation backend unreachable"), ScorerError),
        (ModerationTimeoutError("timed out after 0.2 s", scorer="scripted"), ModerationTimeoutError),
    ],
)
def test_plain_score_failure_raises(tiny_backend: TransformersBackend, error: Exception, expected: type) -> None:
    scorer = ScriptedScorer(always_flag, fail_at=1, error=error)
    llm = guarded(tiny_backend, scorer)

    with pytest.raises(expected) as info:
        llm.invoke(PROMPT)

    audit = info.value.audit
    assert type(info.value) is expected
    assert audit["failure_policy"] == "raise"
    assert audit["error"] == expected.__name__
    assert audit["stop_reason"] == "scorer_error"
    assert audit["status"] == "refused"
    assert audit["score_before"] is None
    assert audit["generations"] == 1


def test_plain_score_failure_refuses(tiny_backend: TransformersBackend) -> None:
    scorer = ScriptedScorer(always_flag, fail_at=1)
    llm = guarded(tiny_backend, scorer, guard={"scorer_failure_policy": "refuse", "refusal_text": REFUSAL})

    message = llm.invoke(PROMPT)

    audit = audit_of(message)
    assert message.content == REFUSAL
    assert audit["status"] == "refused"
    assert audit["failure_policy"] == "refuse"
    assert audit["error"] == "ScorerError"
    assert audit["stop_reason"] == "scorer_error"
    assert audit["score_after"] is None


def test_mid_correction_failure_raises(tiny_backend: TransformersBackend) -> None:
    # The first call flags the plain response; the second, inside the optimizer, fails.
    backend = CountingBackend(tiny_backend)
    scorer = ScriptedScorer(always_flag, fail_at=2)
    llm = guarded(backend, scorer, optimizer=FAST, guard={"score_cache_size": None})

    with pytest.raises(ScorerError, match="ConnectionError: moderation backend unreachable") as info:
        llm.invoke(PROMPT)

    audit = info.value.audit
    assert isinstance(info.value.__cause__, ConnectionError)
    assert audit["failure_policy"] == "raise"
    assert audit["flagged_before"] is True
    assert audit["score_before"] == pytest.approx(0.95)
    assert audit["generations"] == backend.generated
    assert backend.generated > 1


def test_mid_correction_failure_refuses(tiny_backend: TransformersBackend) -> None:
    backend = CountingBackend(tiny_backend)
    scorer = ScriptedScorer(always_flag, fail_at=2)
    llm = guarded(
        backend,
        scorer,
        optimizer=FAST,
        guard={"scorer_failure_policy": "refuse", "refusal_text": REFUSAL, "score_cache_size": None},
    )

    message = llm.invoke(PROMPT)

    audit = audit_of(message)
    assert message.content == REFUSAL
    assert audit["status"] == "refused"
    assert audit["failure_policy"] == "refuse"
    assert audit["error"] == "ScorerError"
    assert audit["stop_reason"] == "scorer_error"
    assert audit["flagged_before"] is True
    assert audit["generations"] == backend.generated
    assert backend.generated > 1


def test_search_scorer_failure_refuses(tiny_backend: TransformersBackend) -> None:
    plain = plain_text(tiny_backend)
    search = ScriptedScorer(always_flag, fail_at=2, name="cheap")
    llm = guarded(
        tiny_backend,
        flag_texts({plain}),
        search_scorer=search,
        optimizer=FAST,
        guard={"scorer_failure_policy": "refuse", "refusal_text": REFUSAL, "score_cache_size": None},
    )

    message = llm.invoke(PROMPT)

    audit = audit_of(message)
    assert message.content == REFUSAL
    assert audit["error"] == "ScorerError"
    assert audit["search_scorer"] == "cheap"
    assert audit["flagged_before"] is True


@pytest.mark.parametrize(
    ("results", "match"),
    [
        (lambda texts: [], "returned 0 results for 1 texts"),
        (lambda texts: [0.1 for _ in texts], "returned float, not ModerationResult"),
    ],
)
def test_unusable_scorer_output_raises(
    tiny_backend: TransformersBackend, results: Callable[[Sequence[str]], list[Any]], match: str
) -> None:
    llm = guarded(tiny_backend, RawScorer(results), guard={"score_cache_size": None})

    with pytest.raises(ScorerError, match=match):
        llm.invoke(PROMPT)


def test_unusable_scorer_output_refuses(tiny_backend: TransformersBackend) -> None:
    scorer = RawScorer(lambda texts: [])
    llm = guarded(
        tiny_backend, scorer, guard={"score_cache_size": None, "scorer_failure_policy": "refuse", "refusal_text": REFUSAL}
    )

    assert llm.invoke(PROMPT).content == REFUSAL


def test_stream_scorer_failure_yields_nothing(tiny_backend: TransformersBackend) -> None:
    llm = guarded(tiny_backend, ScriptedScorer(always_flag, fail_at=1))
    chunks: list[Any] = []

    with pytest.raises(ScorerError):
        for chunk in llm.stream(PROMPT):
            chunks.append(chunk)

    assert chunks == []


async def test_ainvoke_scorer_failure_raises(tiny_backend: TransformersBackend) -> None:
    llm = guarded(tiny_backend, ScriptedScorer(always_flag, fail_at=1))

    with pytest.raises(ScorerError):
        await llm.ainvoke(PROMPT)


# Budgets per call


def test_generation_cap_refuses(tiny_backend: TransformersBackend) -> None:
    # Plain 1, then 4 directions + 1 step per iteration: 1 + 5 + 5 = 11; a third iteration would need 16.
    backend = CountingBackend(tiny_backend)
    optimizer = {"num_directions": 4, "max_iterations": 50, "max_generations": 12}
    llm = guarded(backend, always_flag, optimizer=optimizer, guard={"refusal_text": REFUSAL})

    message = llm.invoke(PROMPT)

    audit = audit_of(message)
    assert message.content == REFUSAL
    assert audit["stop_reason"] == "max_generations"
    assert audit["failure_policy"] == "refuse"
    assert audit["generations"] == 11
    assert audit["iterations"] == 2
    assert backend.generated == 11


def test_generation_cap_best_effort(tiny_backend: TransformersBackend) -> None:
    backend = CountingBackend(tiny_backend)
    optimizer = {"num_directions": 4, "max_iterations": 50, "max_generations": 12}
    llm = guarded(backend, always_flag, optimizer=optimizer, guard={"failure_policy": "best_effort"})

    message = llm.invoke(PROMPT)

    audit = audit_of(message)
    assert audit["status"] == "unresolved"
    assert audit["stop_reason"] == "max_generations"
    assert audit["failure_policy"] == "best_effort"
    assert audit["flagged_after"] is True
    assert backend.generated == 11


def test_generation_cap_raises_budget_error(tiny_backend: TransformersBackend) -> None:
    backend = CountingBackend(tiny_backend)
    optimizer = {"num_directions": 4, "max_iterations": 50, "max_generations": 12}
    llm = guarded(backend, always_flag, optimizer=optimizer, guard={"failure_policy": "raise"})

    with pytest.raises(BudgetExceededError, match="stop reason: max_generations") as info:
        llm.invoke(PROMPT)

    assert info.value.audit["stop_reason"] == "max_generations"
    assert info.value.audit["generations"] == 11
    assert backend.generated == 11


def test_generation_cap_below_first_batch(tiny_backend: TransformersBackend) -> None:
    backend = CountingBackend(tiny_backend)
    optimizer = {"num_directions": 4, "max_generations": 3}
    llm = guarded(backend, always_flag, optimizer=optimizer, guard={"refusal_text": REFUSAL})

    message = llm.invoke(PROMPT)

    audit = audit_of(message)
    assert message.content == REFUSAL
    assert audit["stop_reason"] == "max_generations"
    assert audit["iterations"] == 0
    assert backend.generated == 1


@pytest.mark.parametrize("policy", ["refuse", "best_effort", "raise"])
def test_time_budget_overrun_is_bounded(
    tiny_backend: TransformersBackend, monkeypatch: pytest.MonkeyPatch, policy: str
) -> None:
    # On a fake clock each generation batch costs 0.25 s and each scorer call 1 s, so the
    # bound below is exact arithmetic, not a measurement.
    clock = FakeClock()
    fake_time = SimpleNamespace(monotonic=clock.monotonic)
    monkeypatch.setattr("ttsa_guard.guard.time", fake_time)
    monkeypatch.setattr("ttsa_guard.optimizer.time", fake_time)
    generation_cost, scorer_cost, max_seconds = 0.25, 1.0, 2.0
    backend = CountingBackend(tiny_backend, clock=clock, cost=generation_cost)
    scorer = ScriptedScorer(always_flag, clock=clock, cost=scorer_cost)
    llm = guarded(
        backend,
        scorer,
        optimizer={"num_directions": 4, "max_iterations": 1000, "max_seconds": max_seconds},
        guard={"failure_policy": policy, "score_cache_size": None},
    )

    if policy == "raise":
        with pytest.raises(BudgetExceededError) as info:
            llm.invoke(PROMPT)
        audit = info.value.audit
    else:
        audit = audit_of(llm.invoke(PROMPT))

    assert audit["stop_reason"] == "max_seconds"
    assert audit["failure_policy"] == policy
    assert max(backend.call_times) < max_seconds, "no batch starts after the budget ran out"
    assert audit["seconds"] <= max_seconds + generation_cost + scorer_cost
    assert audit["generations"] == backend.generated


def test_time_budget_slow_scorer_stops(tiny_backend: TransformersBackend) -> None:
    def slow_flag(text: str) -> float:
        time.sleep(0.05)
        return 0.95

    llm = guarded(
        tiny_backend,
        slow_flag,
        optimizer={"num_directions": 2, "max_iterations": 1000, "max_seconds": 0.3},
        guard={"failure_policy": "raise", "score_cache_size": None},
    )

    started = time.monotonic()
    with pytest.raises(BudgetExceededError) as info:
        llm.invoke(PROMPT)
    elapsed = time.monotonic() - started

    assert info.value.audit["stop_reason"] == "max_seconds"
    assert info.value.audit["iterations"] < 1000
    # Generous on purpose: the bound is checked exactly on the fake clock above.
    assert elapsed < 60.0


# Input validation


@pytest.mark.parametrize(
    "block",
    [
        {"type": "audio", "base64": "UklGRg==", "mime_type": "audio/wav"},
        {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}},
        {"type": "image", "base64": "iVBORw0=", "mime_type": "image/png"},
        {"type": "file", "base64": "JVBERi0=", "mime_type": "application/pdf"},
    ],
)
def test_non_text_block_raises(tiny_backend: TransformersBackend, block: dict[str, Any]) -> None:
    backend = CountingBackend(tiny_backend)
    llm = guarded(backend, lambda text: 0.0)
    message = HumanMessage(content=[{"type": "text", "text": "What is this?"}, block])

    with pytest.raises(InvalidInputError, match=r"content block; the guarded model reads text only"):
        llm.invoke([message])

    assert backend.generated == 0


@pytest.mark.parametrize(
    ("messages", "match"),
    [
        ([SystemMessage("Be brief."), HumanMessage(" \n\t ")], r"last message \(HumanMessage\) is empty"),
        ([HumanMessage("Hi"), AIMessage("Hello."), HumanMessage("   ")], r"last message \(HumanMessage\) is empty"),
        ([HumanMessage("  "), AIMessage("Sure.")], r"last user message must have non-empty text"),
    ],
)
def test_whitespace_message_raises(tiny_backend: TransformersBackend, messages: list[BaseMessage], match: str) -> None:
    backend = CountingBackend(tiny_backend)
    llm = guarded(backend, lambda text: 0.0)

    with pytest.raises(InvalidInputError, match=match):
        llm.invoke(messages)

    assert backend.generated == 0


@pytest.mark.parametrize(
    ("value", "error", "match"),
    [
        (123, ValueError, r"Invalid input type <class 'int'>"),
        (None, ValueError, r"Invalid input type <class 'NoneType'>"),
        ({"question": "Hi"}, ValueError, r"Invalid input type <class 'dict'>"),
        ([HumanMessage("Hi"), 42], NotImplementedError, r"Unsupported message type: <class 'int'>"),
    ],
)
def test_non_message_input_raises(tiny_backend: TransformersBackend, value: Any, error: type, match: str) -> None:
    # LangChain rejects these before the guard runs; the error names the type.
    backend = CountingBackend(tiny_backend)
    llm = guarded(backend, lambda text: 0.0)

    with pytest.raises(error, match=match):
        llm.invoke(value)

    assert backend.generated == 0


@pytest.mark.parametrize(
    ("settings", "match"),
    [
        ({"optimizer": {"max_generations": 0}}, r"OptimizerConfig\.max_generations=0: .*greater than or equal to 1"),
        ({"optimizer": {"max_seconds": 0}}, r"OptimizerConfig\.max_seconds=0: .*greater than 0"),
        ({"optimizer": {"max_seconds": float("nan")}}, r"OptimizerConfig\.max_seconds=nan: .*greater than 0"),
        ({"optimizer": {"max_iterations": 0}}, r"OptimizerConfig\.max_iterations=0: "),
        ({"optimizer": {"estimator": "antithetic", "num_directions": 3}}, r"num_directions=3: the antithetic"),
        ({"optimizer": {"step": 0.1}}, r"OptimizerConfig\.step=0\.1: unknown setting"),
        ({"optimizer": "fast"}, r"Expected OptimizerConfig or a dict of its fields, got str"),
        ({"guard": {"scorer_failure_policy": "allow"}}, r"GuardConfig\.scorer_failure_policy='allow': .*'raise' or 'refuse'"),
        ({"guard": {"refusal_text": ""}}, r"GuardConfig\.refusal_text='': .*at least 1 character"),
        ({"guard": {"score_cache_size": -1}}, r"GuardConfig\.score_cache_size=-1: "),
        ({"generation": {"top_p": 0.0}}, r"GenerationConfig\.top_p=0\.0: .*greater than 0"),
        ({"generation": {"stop": [""]}}, r"GenerationConfig\.stop=\[''\]: stop strings must be non-empty"),
        ({"max_tokens": 0}, r"max_tokens must be in \[1, 8192\], got 0"),
    ],
)
def test_invalid_setting_names_field(tiny_backend: TransformersBackend, settings: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        GuardedChatModel(backend=tiny_backend, scorer=lambda text: 0.0, **settings)


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"max_tokens": 0}, r"GenerationConfig\.max_new_tokens=0: .*greater than or equal to 1"),
        ({"temperature": "hot"}, r"GenerationConfig\.temperature='hot': .*valid number"),
        ({"stop": [""]}, r"GenerationConfig\.stop=\[''\]: stop strings must be non-empty"),
    ],
)
def test_invalid_call_option_names_field(
    tiny_backend: TransformersBackend, options: dict[str, Any], match: str
) -> None:
    backend = CountingBackend(tiny_backend)
    llm = guarded(backend, lambda text: 0.0)

    with pytest.raises(ConfigurationError, match=match):
        llm.invoke(PROMPT, **options)

    assert backend.generated == 0


def test_max_tokens_beyond_context_raises(tiny_backend: TransformersBackend) -> None:
    llm = guarded(tiny_backend, lambda text: 0.0)
    prompt_tokens = tiny_backend.encode([{"role": "user", "content": PROMPT}]).num_tokens

    with pytest.raises(PromptTooLongError) as info:
        llm.invoke(PROMPT, max_tokens=600)

    assert info.value.prompt_tokens == prompt_tokens
    assert info.value.max_new_tokens == 600
    assert info.value.context_length == 512
    assert f"lower max_new_tokens to at most {512 - prompt_tokens}" in str(info.value)


def test_prompt_beyond_context_raises(tiny_backend: TransformersBackend) -> None:
    llm = guarded(tiny_backend, lambda text: 0.0)

    with pytest.raises(PromptTooLongError) as info:
        llm.invoke("word " * 150)

    overflow = info.value.prompt_tokens + MAX_TOKENS - 512
    assert info.value.prompt_tokens > 512
    assert f"Shorten the messages by at least {overflow} tokens" in str(info.value)
    assert "at most 0" not in str(info.value)


# Concurrency and determinism

WORDS = "rain snow river stone apple cloud tiger maple ocean candle violin garden desert copper lantern harbor".split()
PROMPTS = [f"{WORDS[i % 16]} {WORDS[(i * 7 + 3) % 16]} {i}" for i in range(32)]
# Every fourth prompt's plain response is flagged, so those prompts go through a correction.
FLAGGED_EVERY = 4
CONCURRENT_OPTIMIZER: dict[str, Any] = {"num_directions": 4, "max_iterations": 4}


@pytest.fixture(scope="module")
def sharp_backend(tiny_model: LlamaForCausalLM, tiny_tokenizer: PreTrainedTokenizerFast) -> TransformersBackend:
    """The tiny model with sharpened attention, so each prompt gets its own response.

    The shared tiny model maps most prompts to a handful of responses, which would hide an
    answer that went to the wrong caller.
    """
    model = copy.deepcopy(tiny_model)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.q_proj.weight.mul_(32.0)
            layer.self_attn.k_proj.weight.mul_(32.0)

    return TransformersBackend(model, tiny_tokenizer, name="tiny-llama-sharp")


@pytest.fixture(scope="module")
def flagged_texts(sharp_backend: TransformersBackend) -> set[str]:
    return {plain_text(sharp_backend, prompt) for prompt in PROMPTS[::FLAGGED_EVERY]}


def concurrent_llm(backend: TransformersBackend, flagged: set[str]) -> GuardedChatModel:
    """A fresh guard (and score cache) on the shared backend."""
    return guarded(backend, flag_texts(flagged), optimizer=CONCURRENT_OPTIMIZER)


@pytest.fixture(scope="module")
def sequential_answers(sharp_backend: TransformersBackend, flagged_texts: set[str]) -> dict[str, tuple[str, str]]:
    """Each prompt's (content, status), one call at a time."""
    llm = concurrent_llm(sharp_backend, flagged_texts)
    answers = {}
    for prompt in PROMPTS:
        message = llm.invoke(prompt)
        answers[prompt] = (str(message.content), audit_of(message)["status"])

    return answers


def test_sequential_answers_distinct(
    sharp_backend: TransformersBackend, sequential_answers: dict[str, tuple[str, str]]
) -> None:
    plain = [plain_text(sharp_backend, prompt) for prompt in PROMPTS]
    statuses = [status for _, status in sequential_answers.values()]

    assert len(PROMPTS) == 32
    assert len(set(plain)) == len(PROMPTS), "a mixed-up answer must be visible"
    assert statuses.count("corrected") >= 4


def test_threads_get_own_answers(
    sharp_backend: TransformersBackend, flagged_texts: set[str], sequential_answers: dict[str, tuple[str, str]]
) -> None:
    llm = concurrent_llm(sharp_backend, flagged_texts)

    with ThreadPoolExecutor(max_workers=len(PROMPTS)) as pool:
        futures = {prompt: pool.submit(llm.invoke, prompt) for prompt in PROMPTS}
        _, pending = wait(futures.values(), timeout=600)

    assert not pending, "a call did not finish: deadlock or hang"
    answers = {prompt: (str(f.result().content), audit_of(f.result())["status"]) for prompt, f in futures.items()}
    assert answers == sequential_answers


def test_batch_gets_own_answers(
    sharp_backend: TransformersBackend, flagged_texts: set[str], sequential_answers: dict[str, tuple[str, str]]
) -> None:
    llm = concurrent_llm(sharp_backend, flagged_texts)

    messages = llm.batch(PROMPTS, config={"max_concurrency": 8})

    answers = {prompt: (str(m.content), audit_of(m)["status"]) for prompt, m in zip(PROMPTS, messages)}
    assert answers == sequential_answers


async def test_ainvoke_gets_own_answers(
    sharp_backend: TransformersBackend, flagged_texts: set[str], sequential_answers: dict[str, tuple[str, str]]
) -> None:
    llm = concurrent_llm(sharp_backend, flagged_texts)

    messages = await asyncio.wait_for(asyncio.gather(*(llm.ainvoke(prompt) for prompt in PROMPTS)), timeout=600)

    answers = {prompt: (str(m.content), audit_of(m)["status"]) for prompt, m in zip(PROMPTS, messages)}
    assert answers == sequential_answers


def test_same_seed_same_correction(sharp_backend: TransformersBackend, flagged_texts: set[str]) -> None:
    prompt = PROMPTS[0]
    settings = {"optimizer": {**CONCURRENT_OPTIMIZER, "seed": 7}, "guard": {"score_cache_size": None}}

    first = guarded(sharp_backend, flag_texts(flagged_texts), **settings).invoke(prompt)
    second = guarded(sharp_backend, flag_texts(flagged_texts), **settings).invoke(prompt)

    first_audit, second_audit = audit_of(first), audit_of(second)
    assert first_audit["status"] == "corrected"
    assert second.content == first.content
    assert second_audit["steered_prompt"] == first_audit["steered_prompt"]
    assert second_audit["generations"] == first_audit["generations"]
    assert [step["score"] for step in second_audit["history"]] == [step["score"] for step in first_audit["history"]]
