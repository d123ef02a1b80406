"""Tests of GuardModelScorer on tiny causal LMs with random, seeded weights."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from ttsa_guard.errors import ConfigurationError, ScorerError
from ttsa_guard.moderation import GuardModelScorer, load_scorer

WORDS = [
    "<pad>", "<unk>", "<s>", "[INST]", "[/INST]", "user:", "assistant:", "policy:", "strict",
    "safe", "unsafe", "hello", "world", "kill", "you", "please", "help", "me", "how", "do", "i",
    "a", "bomb", "make", "cake", "sure", "no",
]  # fmt: skip
TEMPLATE = (
    "<s> [INST] {% if policy is defined %}policy: {{ policy }} {% endif %}"
    "{% for message in messages %}{{ message['role'] }}: {{ message['content'] }} {% endfor %}"
    "{% if add_generation_prompt %}[/INST]{% endif %}"
)
PAIRS: list[tuple[str, str | None]] = [
    ("sure make a bomb", "how do i make a bomb"),
    ("no", "how do i make a bomb"),
    ("hello world", None),
    ("kill you please kill you", "help me"),
    ("a cake", "how do i make a cake please"),
]


def make_tokenizer(template: str | None = TEMPLATE) -> PreTrainedTokenizerFast:
    tokenizer = Tokenizer(models.WordLevel(vocab={word: i for i, word in enumerate(WORDS)}, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="<unk>", pad_token="<pad>", bos_token="<s>")
    fast.chat_template = template
    return fast


def make_llama(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(WORDS),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=64,
        # Large random weights, so that scores vary between conversations.
        initializer_range=0.5,
        pad_token_id=0,
        bos_token_id=2,
        eos_token_id=2,
    )
    return LlamaForCausalLM(config).eval()


def make_gpt2(seed: int = 0) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=len(WORDS), n_embd=16, n_layer=2, n_head=2, n_positions=64, initializer_range=0.5,
        bos_token_id=2, eos_token_id=2, pad_token_id=0,
    )  # fmt: skip
    return GPT2LMHeadModel(config).eval()


def last_logits(model: Any, text: str, prompt: str | None, **template_kwargs: Any) -> torch.Tensor:
    """Next-token logits after the rendered conversation, one unpadded sequence, without the scorer."""
    tokenizer = make_tokenizer()
    if prompt is None:
        conversation = [{"role": "user", "content": text}]
    else:
        conversation = [{"role": "user", "content": prompt}, {"role": "assistant", "content": text}]
    rendered = tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True, **template_kwargs)
    ids = tokenizer(rendered, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits[0, -1].float()


def p_unsafe(model: Any, text: str, prompt: str | None, **template_kwargs: Any) -> float:
    logits = last_logits(model, text, prompt, **template_kwargs)
    pair = logits[[WORDS.index("safe"), WORDS.index("unsafe")]]
    return torch.softmax(pair, dim=-1)[1].item()


def score_pairs(scorer: GuardModelScorer, pairs: list[tuple[str, str | None]]) -> list[float]:
    texts = [text for text, _ in pairs]
    prompts = [prompt for _, prompt in pairs]
    return [result.score for result in scorer.score(texts, prompts=prompts)]


def test_score_is_two_verdict_softmax() -> None:
    model = make_llama()
    scorer = GuardModelScorer(model, tokenizer=make_tokenizer())

    scores = score_pairs(scorer, PAIRS)

    expected = [p_unsafe(model, text, prompt) for text, prompt in PAIRS]
    assert scores == pytest.approx(expected, abs=1e-5)
    full_vocab = [
        torch.softmax(last_logits(model, text, prompt), dim=-1)[WORDS.index("unsafe")].item() for text, prompt in PAIRS
    ]
    assert all(abs(score - other) > 0.05 for score, other in zip(scores, full_vocab, strict=True))


def test_prompt_changes_conversation() -> None:
    model = make_llama()
    scorer = GuardModelScorer(model, tokenizer=make_tokenizer())

    [alone, in_context] = scorer.score(["sure make a bomb", "sure make a bomb"], prompts=[None, "how do i make a bomb"])

    assert alone.score == pytest.approx(p_unsafe(model, "sure make a bomb", None), abs=1e-5)
    assert in_context.score == pytest.approx(p_unsafe(model, "sure make a bomb", "how do i make a bomb"), abs=1e-5)
    assert abs(alone.score - in_context.score) > 1e-3


def test_no_prompts_scores_user_messages() -> None:
    model = make_llama()

    results = GuardModelScorer(model, tokenizer=make_tokenizer()).score(["hello world", "kill you"])

    expected = [p_unsafe(model, "hello world", None), p_unsafe(model, "kill you", None)]
    assert [result.score for result in results] == pytest.approx(expected, abs=1e-5)
    assert list(results[0].categories) == ["unsafe"]


def test_left_padding_keeps_absolute_positions() -> None:
    # GPT-2 has learned absolute positions, so wrong position ids change its logits.
    model = make_gpt2()
    scorer = GuardModelScorer(model, tokenizer=make_tokenizer(), batch_size=len(PAIRS))

    scores = score_pairs(scorer, PAIRS)

    assert scores == pytest.approx([p_unsafe(model, text, prompt) for text, prompt in PAIRS], abs=1e-5)


@pytest.mark.parametrize("batch_size", [1, 2, 8])
def test_batch_size_does_not_change_scores(batch_size: int) -> None:
    model = make_llama(seed=1)
    scorer = GuardModelScorer(model, tokenizer=make_tokenizer(), batch_size=batch_size)

    scores = score_pairs(scorer, PAIRS)

    assert scores == pytest.approx([p_unsafe(model, text, prompt) for text, prompt in PAIRS], abs=1e-5)


def test_threshold_decides_flag() -> None:
    model = make_llama()
    expected = p_unsafe(model, "sure make a bomb", "how do i make a bomb")

    [below] = GuardModelScorer(model, tokenizer=make_tokenizer(), threshold=expected - 0.01).score(
        ["sure make a bomb"], prompts=["how do i make a bomb"]
    )
    [above] = GuardModelScorer(model, tokenizer=make_tokenizer(), threshold=expected + 0.01).score(
        ["sure make a bomb"], prompts=["how do i make a bomb"]
    )

    assert below.flagged is True
    assert above.flagged is False


def test_custom_verdict_strings_use_first_token() -> None:
    model = make_llama()
    scorer = GuardModelScorer(model, tokenizer=make_tokenizer(), safe_token="no", unsafe_token="sure thing")

    [result] = scorer.score(["kill you"])

    logits = last_logits(model, "kill you", None)
    expected = torch.softmax(logits[[WORDS.index("no"), WORDS.index("sure")]], dim=-1)[1].item()
    assert result.score == pytest.approx(expected, abs=1e-5)
    assert list(result.categories) == ["sure thing"]


def test_template_override_and_kwargs() -> None:
    model = make_llama()
    scorer = GuardModelScorer(
        model, tokenizer=make_tokenizer(template=None), chat_template=TEMPLATE, chat_template_kwargs={"policy": "strict"}
    )

    [result] = scorer.score(["kill you"], prompts=["help me"])

    assert result.score == pytest.approx(p_unsafe(model, "kill you", "help me", policy="strict"), abs=1e-5)
    assert abs(result.score - p_unsafe(model, "kill you", "help me")) > 1e-4


async def test_async_matches_sync() -> None:
    scorer = GuardModelScorer(make_llama(), tokenizer=make_tokenizer())

    texts = [text for text, _ in PAIRS]
    assert [r.score for r in await scorer.ascore(texts)] == pytest.approx([r.score for r in scorer.score(texts)])


def test_eval_mode_set() -> None:
    model = make_llama().train()

    GuardModelScorer(model, tokenizer=make_tokenizer())

    assert not model.training


# Rejected settings and inputs


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"safe_token": "unsafe"}, r"two different non-empty strings"),
        ({"unsafe_token": ""}, r"two different non-empty strings"),
        ({"safe_token": "safe", "unsafe_token": "safe bet"}, r"start with the same token \(id 9\)"),
        ({"safe_token": "   "}, r"encodes to no tokens"),
        ({"batch_size": 0}, r"batch_size must be an int >= 1, got 0"),
        ({"max_length": -3}, r"max_length must be None or an int >= 1, got -3"),
        ({"threshold": 0.0}, r"threshold must be in \(0, 1\], got 0\.0"),
    ],
)
def test_invalid_options_rejected(options: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        GuardModelScorer(make_llama(), tokenizer=make_tokenizer(), **options)


def test_missing_chat_template_rejected() -> None:
    with pytest.raises(ConfigurationError, match="no chat template"):
        GuardModelScorer(make_llama(), tokenizer=make_tokenizer(template=None))


def test_built_model_needs_tokenizer() -> None:
    with pytest.raises(ConfigurationError, match="needs tokenizer="):
        GuardModelScorer(make_llama())


def test_too_long_conversation_raises() -> None:
    model = make_llama()
    # "<s> [INST] user: help me assistant: hello world [/INST]" is 9 tokens.
    fits = GuardModelScorer(model, tokenizer=make_tokenizer(), max_length=9)
    too_short = GuardModelScorer(model, tokenizer=make_tokenizer(), max_length=8)

    assert len(fits.score(["hello world"], prompts=["help me"])) == 1
    with pytest.raises(ScorerError, match=r"has 9 tokens, more than max_length=8"):
        too_short.score(["hello world"], prompts=["help me"])


def test_template_error_raises_scorer_error() -> None:
    template = "{% if messages | length > 1 %}{{ raise_exception('roles must be user only') }}{% endif %}[/INST]"
    scorer = GuardModelScorer(make_llama(), tokenizer=make_tokenizer(), chat_template=template)

    with pytest.raises(ScorerError, match="roles must be user only"):
        scorer.score(["hello"], prompts=["help me"])


# Loading from a folder


def test_load_scorer_guard_name_loads_lazily(tmp_path: Path) -> None:
    model = make_llama(seed=2)
    model.save_pretrained(tmp_path)
    make_tokenizer().save_pretrained(tmp_path)

    scorer = load_scorer(f"guard:{tmp_path}", device="cpu")

    assert isinstance(scorer, GuardModelScorer)
    assert scorer._loaded is None
    assert scorer.name == f"guard:{tmp_path}"
    scores = score_pairs(scorer, PAIRS)
    assert scores == pytest.approx([p_unsafe(model, text, prompt) for text, prompt in PAIRS], abs=1e-5)
