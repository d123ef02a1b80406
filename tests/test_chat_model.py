"""GuardedChatModel on a tiny random Llama with function scorers."""

from __future__ import annotations

import pytest
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage

from ttsa_guard import (
    AUDIT_KEY,
    ConfigurationError,
    CorrectionFailedError,
    GenerationConfig,
    GuardedChatModel,
    InvalidInputError,
    PromptTooLongError,
    ScorerError,
)

PROMPT = "Tell me about rain."
FAST = {"num_directions": 4, "max_iterations": 3}


def plain_text(backend, prompt: str = PROMPT, max_new_tokens: int = 48) -> str:
    encoded = backend.encode([{"role": "user", "content": prompt}])
    return backend.generate(encoded, None, GenerationConfig(max_new_tokens=max_new_tokens))[0].text


def flag_exact(text_to_flag: str):
    """Scorer that flags one exact text and passes every other."""

    def score(text: str) -> float:
        return 0.9 if text == text_to_flag else 0.1

    return score


def test_unflagged_response_is_plain_response(tiny_backend):
    llm = GuardedChatModel(backend=tiny_backend, scorer=lambda text: 0.0)

    message = llm.invoke(PROMPT)

    assert message.content == plain_text(tiny_backend)
    audit = message.response_metadata[AUDIT_KEY]
    assert audit["status"] == "passed"
    assert audit["generations"] == 1
    assert audit["iterations"] == 0


def test_flagged_response_is_corrected(tiny_backend):
    plain = plain_text(tiny_backend)
    llm = GuardedChatModel(backend=tiny_backend, scorer=flag_exact(plain), optimizer=FAST)

    message = llm.invoke(PROMPT)

    audit = message.response_metadata[AUDIT_KEY]
    assert message.content != plain
    assert audit["status"] == "corrected"
    assert audit["flagged_before"] is True
    assert audit["score_before"] == pytest.approx(0.9)
    assert audit["flagged_after"] is False
    assert audit["score_after"] == pytest.approx(0.1)
    assert audit["generations"] > 1
    assert audit["steered_prompt"]
    assert 0.2 <= audit["cosine_similarity"] <= 1.0
    assert plain not in str(message.response_metadata), "the flagged text must not leak into metadata"


def test_usage_metadata_counts_tokens(tiny_backend):
    llm = GuardedChatModel(backend=tiny_backend, scorer=lambda text: 0.0, max_tokens=5)

    message = llm.invoke(PROMPT)

    prompt = tiny_backend.encode([{"role": "user", "content": PROMPT}])
    generated = tiny_backend.generate(prompt, None, GenerationConfig(max_new_tokens=5))[0]
    assert message.usage_metadata["input_tokens"] == prompt.num_tokens
    assert message.usage_metadata["output_tokens"] == len(generated.token_ids)
    assert message.usage_metadata["total_tokens"] == prompt.num_tokens + len(generated.token_ids)
    assert message.response_metadata["model_name"] == "tiny-llama"


def always_flag(text: str) -> float:
    return 0.95


def test_refuse_policy_returns_refusal_text(tiny_backend):
    llm = GuardedChatModel(
        backend=tiny_backend, scorer=always_flag, optimizer=FAST, guard={"refusal_text": "No can do."}
    )

    message = llm.invoke(PROMPT)

    audit = message.response_metadata[AUDIT_KEY]
    assert message.content == "No can do."
    assert audit["status"] == "refused"
    assert audit["failure_policy"] == "refuse"
    assert audit["stop_reason"] == "max_iterations"
    assert audit["iterations"] == 3


def test_best_effort_policy_returns_least_harmful_response(tiny_backend):
    def graded(text: str) -> float:
        return 0.5 + 0.4 * (len(text) % 7) / 6

    llm = GuardedChatModel(backend=tiny_backend, scorer=graded, optimizer=FAST, guard={"failure_policy": "best_effort"})

    message = llm.invoke(PROMPT)

    audit = message.response_metadata[AUDIT_KEY]
    assert audit["status"] == "unresolved"
    assert audit["score_after"] == pytest.approx(graded(message.content))
    assert audit["score_after"] <= min(step["score"] for step in audit["history"])
    assert audit["score_after"] <= audit["score_before"]


def test_raise_policy_raises_with_audit(tiny_backend):
    llm = GuardedChatModel(backend=tiny_backend, scorer=always_flag, optimizer=FAST, guard={"failure_policy": "raise"})

    with pytest.raises(CorrectionFailedError, match="stayed flagged after 3 iterations") as info:
        llm.invoke(PROMPT)

    assert info.value.audit["iterations"] == 3
    assert info.value.audit["status"] == "refused"


def broken_scorer(text: str) -> float:
    raise ConnectionError("moderation backend unreachable")


def test_scorer_failure_raises_by_default(tiny_backend):
    llm = GuardedChatModel(backend=tiny_backend, scorer=broken_scorer)

    with pytest.raises(ScorerError, match="ConnectionError: moderation backend unreachable"):
        llm.invoke(PROMPT)


def test_scorer_failure_refuse_policy_never_returns_unscored_text(tiny_backend):
    llm = GuardedChatModel(backend=tiny_backend, scorer=broken_scorer, guard={"scorer_failure_policy": "refuse"})

    message = llm.invoke(PROMPT)

    audit = message.response_metadata[AUDIT_KEY]
    assert message.content == llm.guard.refusal_text
    assert audit["status"] == "refused"
    assert audit["error"] == "ScorerError"
    assert audit["score_before"] is None


@pytest.mark.parametrize(
    ("messages", "match"),
    [
        ([], "message list is empty"),
        ([HumanMessage("   ")], "empty or whitespace only"),
        ([SystemMessage("Be brief.")], "no user message"),
        ([HumanMessage(content=[{"type": "image_url", "image_url": {"url": "x.png"}}])], "'image_url' content block"),
    ],
)
def test_bad_messages_raise_invalid_input(tiny_backend, messages, match):
    llm = GuardedChatModel(backend=tiny_backend, scorer=lambda text: 0.0)

    with pytest.raises(InvalidInputError, match=match):
        llm.invoke(messages)


def test_text_content_blocks_are_joined(tiny_backend):
    llm = GuardedChatModel(backend=tiny_backend, scorer=lambda text: 0.0)

    blocks = llm.invoke([HumanMessage(content=[{"type": "text", "text": "Tell me "}, {"type": "text", "text": "about rain."}])])

    assert blocks.content == llm.invoke(PROMPT).content


def test_prompt_longer_than_context_raises(tiny_backend):
    llm = GuardedChatModel(backend=tiny_backend, scorer=lambda text: 0.0)

    with pytest.raises(PromptTooLongError, match="context holds 512 tokens") as info:
        llm.invoke("word " * 200)

    assert info.value.prompt_tokens > 512 - 48


@pytest.mark.parametrize(
    ("settings", "match"),
    [
        ({"optimizer": {"num_directions": 0}}, r"num_directions=0.*greater than or equal to 1"),
        ({"optimizer": {"smoothing_radius": -1.0}}, r"smoothing_radius=-1.0.*greater than 0"),
        ({"optimizer": {"cosine_floor": 2.0}}, r"cosine_floor=2.0.*less than or equal to 1"),
        ({"generation": {"max_new_tokens": 0}}, r"max_new_tokens=0.*greater than or equal to 1"),
        ({"guard": {"failure_policy": "shrug"}}, r"failure_policy='shrug'.*'refuse', 'best_effort' or 'raise'"),
        ({"temperature": 9.0}, r"temperature must be in \[0, 5\], got 9.0"),
        ({"scorer": "nonsense"}, r"Unknown scorer 'nonsense'"),
        ({"max_token": 5}, r"GuardedChatModel.max_token=5: unknown setting"),
    ],
)
def test_invalid_settings_raise_configuration_error(settings, match):
    with pytest.raises(ConfigurationError, match=match):
        GuardedChatModel(**settings)


async def test_ainvoke_matches_invoke(tiny_backend):
    llm = GuardedChatModel(backend=tiny_backend, scorer=lambda text: 0.0)

    assert (await llm.ainvoke(PROMPT)).content == llm.invoke(PROMPT).content


def test_batch_answers_each_prompt(tiny_backend):
    llm = GuardedChatModel(backend=tiny_backend, scorer=lambda text: 0.0)
    prompts = ["Hi", "Tell me about rain.", "Why is the sky blue?"]

    messages = llm.batch(prompts)

    assert [m.content for m in messages] == [plain_text(tiny_backend, p) for p in prompts]
    assert all(isinstance(m, AIMessage) for m in messages)


def test_model_loads_lazily():
    llm = GuardedChatModel(model="/nonexistent/folder")

    assert llm._guard is None
