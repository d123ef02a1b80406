"""evaluate() on a tiny random Llama: record fields, chains, plain runnables, errors and plots."""

from __future__ import annotations

import json

import pytest
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnableLambda

from ttsa_guard import ConfigurationError, GenerationConfig, GuardedChatModel
from ttsa_guard.evaluation import DatasetError, Prompt, evaluate, plot, summarize

FAST = {"num_directions": 4, "max_iterations": 3}
TOKENS = 12  # short responses keep the tiny model fast
PROMPTS = ["Hi", "Tell me about rain.", "Why is the sky blue?"]
RECORD_FIELDS = {
    "id",
    "prompt",
    "input",
    "model",
    "scorer",
    "status",
    "plain_response",
    "plain_score",
    "flagged_before",
    "guarded_response",
    "guarded_score",
    "flagged_after",
    "refusal",
    "iterations",
    "generations",
    "scores",
    "seconds",
    "cosine_similarity",
    "stop_reason",
    "error",
    "history",
}


def plain_text(backend, prompt: str) -> str:
    encoded = backend.encode([{"role": "user", "content": prompt}])
    return backend.generate(encoded, None, GenerationConfig(max_new_tokens=TOKENS))[0].text


def flag_texts(*texts: str):
    def flag_listed(text: str) -> float:
        return 0.9 if text in texts else 0.1

    return flag_listed


def test_records_hold_plain_and_guarded_responses(tiny_backend, tmp_path):
    flagged_plain = plain_text(tiny_backend, PROMPTS[1])
    llm = GuardedChatModel(backend=tiny_backend, max_tokens=TOKENS, scorer=flag_texts(flagged_plain), optimizer=FAST)
    output = tmp_path / "run.jsonl"

    records = evaluate(llm, PROMPTS, output=output, progress=False)

    lines = [json.loads(line) for line in output.read_text(encoding="utf-8").splitlines()]
    assert [set(line) for line in lines] == [RECORD_FIELDS] * 3
    passed, corrected = lines[0], lines[1]
    assert passed["status"] == "passed"
    assert passed["plain_response"] == passed["guarded_response"] == plain_text(tiny_backend, PROMPTS[0])
    assert passed["flagged_before"] is False
    assert passed["iterations"] == 0
    assert passed["generations"] == 1
    assert passed["history"] == []
    assert corrected["status"] == "corrected"
    assert corrected["plain_response"] == flagged_plain
    assert corrected["plain_score"] == pytest.approx(0.9)
    assert corrected["flagged_before"] is True
    assert corrected["guarded_response"] != flagged_plain
    assert corrected["guarded_score"] == pytest.approx(0.1)
    assert corrected["flagged_after"] is False
    assert corrected["iterations"] == len(corrected["history"]) >= 1
    assert corrected["generations"] > 1
    assert 0.2 <= corrected["cosine_similarity"] <= 1.0
    assert corrected["seconds"] > 0
    assert [r.model_dump(mode="json") for r in records] == lines


def test_records_match_what_invoke_returns(tiny_backend):
    flagged_plain = plain_text(tiny_backend, PROMPTS[1])
    llm = GuardedChatModel(backend=tiny_backend, max_tokens=TOKENS, scorer=flag_texts(flagged_plain), optimizer=FAST)

    records = evaluate(llm, PROMPTS, progress=False)

    assert [r.guarded_response for r in records] == [llm.invoke(p).content for p in PROMPTS]


def test_unflagged_responses_are_unchanged(tiny_backend):
    llm = GuardedChatModel(backend=tiny_backend, max_tokens=TOKENS, scorer=lambda text: 0.0)

    records = evaluate(llm, PROMPTS, progress=False)

    assert summarize(records).unflagged_changed == 0
    assert [r.plain_response for r in records] == [plain_text(tiny_backend, p) for p in PROMPTS]


def test_refused_record_is_a_refusal(tiny_backend):
    llm = GuardedChatModel(backend=tiny_backend, max_tokens=TOKENS, scorer=lambda text: 0.95, optimizer=FAST, guard={"refusal_text": "Nope."})

    (record,) = evaluate(llm, PROMPTS[:1], progress=False)

    assert record.status == "refused"
    assert record.guarded_response == "Nope."
    assert record.refusal is True
    assert record.guarded_score is None
    assert record.iterations == 3
    assert record.stop_reason == "max_iterations"


def test_prompt_template_fills_input(tiny_backend):
    llm = GuardedChatModel(backend=tiny_backend, max_tokens=TOKENS, scorer=lambda text: 0.0)
    prompt = Prompt(id="x", text="rain", input="Tell me about rain.", row=1)

    (record,) = evaluate(llm, [prompt], progress=False)

    assert record.prompt == "rain"
    assert record.input == "Tell me about rain."
    assert record.plain_response == plain_text(tiny_backend, "Tell me about rain.")


def test_chain_ending_in_guarded_model(tiny_backend):
    llm = GuardedChatModel(backend=tiny_backend, max_tokens=TOKENS, scorer=lambda text: 0.0)
    chain = ChatPromptTemplate.from_messages([("user", "Question: {question}")]) | llm

    records = evaluate(chain, PROMPTS[:2], progress=False)

    assert [r.guarded_response for r in records] == [chain.invoke({"question": p}).content for p in PROMPTS[:2]]
    assert records[0].plain_response == plain_text(tiny_backend, "Question: Hi")


def test_chain_with_bound_options_passes_them(tiny_backend):
    llm = GuardedChatModel(backend=tiny_backend, max_tokens=TOKENS, scorer=lambda text: 0.0)
    chain = ChatPromptTemplate.from_messages([("user", "{q}")]) | llm.bind(max_tokens=3)

    (record,) = evaluate(chain, PROMPTS[:1], progress=False)

    encoded = tiny_backend.encode([{"role": "user", "content": PROMPTS[0]}])
    assert record.plain_response == tiny_backend.generate(encoded, None, GenerationConfig(max_new_tokens=3))[0].text


def test_two_variables_need_input_key(tiny_backend):
    llm = GuardedChatModel(backend=tiny_backend, max_tokens=TOKENS, scorer=lambda text: 0.0)
    template = ChatPromptTemplate.from_messages([("system", "Be {tone}."), ("user", "{question}")])

    with pytest.raises(ConfigurationError, match=r"input variables \['question', 'tone'\]; pass input_key"):
        evaluate(template | llm, PROMPTS[:1], progress=False)

    (record,) = evaluate(template.partial(tone="brief") | llm, PROMPTS[:1], input_key="question", progress=False)
    assert record.status == "passed"


def test_chain_with_plain_runnable(tiny_backend):
    flagged_plain = plain_text(tiny_backend, PROMPTS[1])
    guarded = GuardedChatModel(backend=tiny_backend, max_tokens=TOKENS, scorer=flag_texts(flagged_plain), optimizer=FAST)
    unguarded = GuardedChatModel(backend=tiny_backend, max_tokens=TOKENS, scorer=lambda text: 0.0)
    template = ChatPromptTemplate.from_messages([("user", "{question}")])

    records = evaluate(template | guarded, PROMPTS[:2], plain=template | unguarded | StrOutputParser(), progress=False)

    assert [r.status for r in records] == ["passed", "corrected"]
    assert records[1].plain_response == flagged_plain
    assert records[1].plain_score == pytest.approx(0.9)
    assert records[1].flagged_before is True
    assert records[1].neutralized


def test_plain_runnable_needs_scorer(tiny_backend):
    llm = GuardedChatModel(backend=tiny_backend, max_tokens=TOKENS, scorer=lambda text: 0.0)
    wrapped = RunnableLambda(lambda text: llm.invoke(text))

    with pytest.raises(ConfigurationError, match="Pass scorer"):
        evaluate(wrapped, PROMPTS[:1], plain=RunnableLambda(lambda text: "plain"), progress=False)

    (record,) = evaluate(
        wrapped, PROMPTS[:1], plain=RunnableLambda(lambda text: "plain"), scorer=lambda text: 0.7, progress=False
    )
    assert record.plain_response == "plain"
    assert record.plain_score == pytest.approx(0.7)
    assert record.flagged_before is True


def test_runnable_without_audit_is_rejected(tiny_backend):
    with pytest.raises(ConfigurationError, match="without a plain runnable"):
        evaluate(RunnableLambda(lambda text: text), PROMPTS[:1], progress=False)

    with pytest.raises(ConfigurationError, match=r"without response_metadata\['ttsa_guard'\]"):
        evaluate(
            RunnableLambda(lambda text: text),
            PROMPTS[:1],
            plain=RunnableLambda(lambda text: text),
            scorer=lambda text: 0.0,
            progress=False,
        )


def test_prompt_too_long_becomes_error_record(tiny_backend):
    llm = GuardedChatModel(backend=tiny_backend, max_tokens=TOKENS, scorer=lambda text: 0.0)

    records = evaluate(llm, ["word " * 200, "Hi"], progress=False)

    assert records[0].status == "error"
    assert records[0].error.startswith("PromptTooLongError: The prompt has")
    assert records[0].guarded_response is None
    assert records[1].status == "passed"
    assert summarize(records).errors == 1


def test_raise_policy_records_error(tiny_backend):
    llm = GuardedChatModel(backend=tiny_backend, max_tokens=TOKENS, scorer=lambda text: 0.95, optimizer=FAST, guard={"failure_policy": "raise"})

    (record,) = evaluate(llm, PROMPTS[:1], progress=False)

    assert record.status == "error"
    assert record.error.startswith("CorrectionFailedError: The response stayed flagged after 3 iterations")
    assert record.flagged_before is True
    assert record.iterations == 3
    assert len(record.history) == 3


def test_duplicate_prompt_ids_raise(tiny_backend):
    llm = GuardedChatModel(backend=tiny_backend, max_tokens=TOKENS, scorer=lambda text: 0.0)
    twins = [Prompt(id="a", text="x", input="x", row=1), Prompt(id="a", text="y", input="y", row=2)]

    with pytest.raises(DatasetError, match="Two prompts share the id 'a'"):
        evaluate(llm, twins, progress=False)


def test_plots_are_png_files(tiny_backend, tmp_path):
    flagged_plain = plain_text(tiny_backend, PROMPTS[1])
    llm = GuardedChatModel(backend=tiny_backend, max_tokens=TOKENS, scorer=flag_texts(flagged_plain), optimizer=FAST)
    records = evaluate(llm, PROMPTS, progress=False)

    paths = plot(records, tmp_path / "run", threshold=0.5)

    assert [p.name for p in paths] == ["run.scores.png", "run.iterations.png"]
    for path in paths:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plots_without_steered_prompts(tmp_path):
    paths = plot([], tmp_path / "empty", threshold=None)

    assert all(path.stat().st_size > 0 for path in paths)


def test_public_names_are_sorted_and_exist():
    import ttsa_guard.evaluation as evaluation

    assert evaluation.__all__ == sorted(evaluation.__all__)
    assert all(hasattr(evaluation, name) for name in evaluation.__all__)
