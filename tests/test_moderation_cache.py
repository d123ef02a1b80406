"""Tests of CachedScorer: dedupe, LRU eviction, counters, threads and async."""

from __future__ import annotations

import random
import threading
from collections.abc import Sequence

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import BertConfig, BertForSequenceClassification, PreTrainedTokenizerFast

from ttsa_guard.errors import ConfigurationError, ScorerError
from ttsa_guard.moderation import CachedScorer, ClassifierScorer, ModerationResult, Scorer


def expected(text: str, prompt: str | None) -> ModerationResult:
    """Deterministic result that depends on both the text and the prompt."""
    score = min((len(text) + 10 * len(prompt or "")) / 100, 1.0)
    return ModerationResult(score=score, flagged=score >= 0.5, categories={"length": score})


class RecordingScorer:
    """A plain Scorer (not a BaseScorer) that records the arguments of every call."""

    name = "recording"

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[str], list[str | None] | None]] = []
        self.fail = False
        self.lock = threading.Lock()

    def _record(self, path: str, texts: Sequence[str], prompts: Sequence[str | None] | None) -> list[ModerationResult]:
        with self.lock:
            self.calls.append((path, list(texts), None if prompts is None else list(prompts)))
        if self.fail:
            raise ScorerError("scorer down", scorer=self.name)
        pairs = zip(texts, prompts or [None] * len(texts), strict=True)
        return [expected(text, prompt) for text, prompt in pairs]

    def score(self, texts: Sequence[str], *, prompts: Sequence[str | None] | None = None) -> list[ModerationResult]:
        return self._record("sync", texts, prompts)

    async def ascore(
        self, texts: Sequence[str], *, prompts: Sequence[str | None] | None = None
    ) -> list[ModerationResult]:
        return self._record("async", texts, prompts)


def test_satisfies_protocol_and_keeps_name() -> None:
    cached = CachedScorer(RecordingScorer())

    assert isinstance(cached, Scorer)
    assert cached.name == "recording"


def test_repeats_in_one_call_scored_once() -> None:
    inner = RecordingScorer()
    cached = CachedScorer(inner)

    results = cached.score(["aa", "b", "aa", "aa"])

    assert inner.calls == [("sync", ["aa", "b"], None)]
    assert results == [expected("aa", None), expected("b", None), expected("aa", None), expected("aa", None)]
    assert (cached.hits, cached.misses, cached.calls, cached.texts_scored) == (0, 4, 1, 2)


def test_later_calls_hit_cache() -> None:
    inner = RecordingScorer()
    cached = CachedScorer(inner)
    cached.score(["aa", "b"])

    results = cached.score(["b", "ccc"])

    assert inner.calls[-1] == ("sync", ["ccc"], None)
    assert results == [expected("b", None), expected("ccc", None)]
    assert (cached.hits, cached.misses, cached.calls, cached.texts_scored) == (1, 3, 2, 3)


def test_all_cached_makes_no_call() -> None:
    inner = RecordingScorer()
    cached = CachedScorer(inner)
    cached.score(["aa", "b"])

    cached.score(["b", "aa", "b"])

    assert len(inner.calls) == 1
    assert cached.calls == 1
    assert cached.hits == 3


def test_prompt_is_part_of_key() -> None:
    inner = RecordingScorer()
    cached = CachedScorer(inner)

    results = cached.score(["x", "x", "x"], prompts=["p", "qq", "p"])

    assert inner.calls == [("sync", ["x", "x"], ["p", "qq"])]
    assert [result.score for result in results] == pytest.approx([0.11, 0.21, 0.11])


def test_lru_evicts_least_recent() -> None:
    inner = RecordingScorer()
    cached = CachedScorer(inner, max_size=2)
    cached.score(["a", "b"])
    cached.score(["a"])  # a is now the most recent
    cached.score(["c"])  # evicts b

    cached.score(["a"])
    assert cached.calls == 2
    assert len(cached) == 2

    cached.score(["b"])
    assert cached.calls == 3
    assert inner.calls[-1] == ("sync", ["b"], None)


def test_max_size_zero_keeps_nothing() -> None:
    inner = RecordingScorer()
    cached = CachedScorer(inner, max_size=0)

    cached.score(["a", "a"])
    cached.score(["a"])

    assert [texts for _, texts, _ in inner.calls] == [["a"], ["a"]]
    assert len(cached) == 0


def test_clear_empties_cache_keeps_counters() -> None:
    inner = RecordingScorer()
    cached = CachedScorer(inner)
    cached.score(["a"])

    cached.clear()
    cached.score(["a"])

    assert cached.calls == 2
    assert cached.misses == 2


def test_failure_caches_nothing() -> None:
    inner = RecordingScorer()
    cached = CachedScorer(inner)
    inner.fail = True

    with pytest.raises(ScorerError, match="scorer down"):
        cached.score(["a"])

    inner.fail = False
    assert cached.score(["a"]) == [expected("a", None)]
    assert cached.calls == 2
    assert cached.texts_scored == 2


def test_wrong_result_count_raises() -> None:
    class ShortScorer(RecordingScorer):
        def score(self, texts: Sequence[str], *, prompts: Sequence[str | None] | None = None) -> list[ModerationResult]:
            return super().score(texts, prompts=prompts)[:-1]

    cached = CachedScorer(ShortScorer())

    with pytest.raises(ScorerError, match="returned 1 results for 2 texts"):
        cached.score(["a", "b"])
    assert len(cached) == 0


def test_concurrent_threads_consistent() -> None:
    inner = RecordingScorer()
    cached = CachedScorer(inner, max_size=8)
    pool = [f"text-{i}" * (i + 1) for i in range(20)]
    errors: list[BaseException] = []
    calls_per_thread = 50

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        try:
            for _ in range(calls_per_thread):
                texts = rng.choices(pool, k=3)
                assert cached.score(texts) == [expected(text, None) for text in texts]
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(seed,)) for seed in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    assert cached.hits + cached.misses == 8 * calls_per_thread * 3
    assert cached.calls == len(inner.calls)
    assert cached.texts_scored == sum(len(texts) for _, texts, _ in inner.calls)
    assert len(cached) <= 8


async def test_async_uses_inner_ascore() -> None:
    inner = RecordingScorer()
    cached = CachedScorer(inner)

    results = await cached.ascore(["aa", "aa", "b"], prompts=["p", "p", None])

    assert inner.calls == [("async", ["aa", "b"], ["p", None])]
    assert results == [expected("aa", "p"), expected("aa", "p"), expected("b", None)]


async def test_async_and_sync_share_cache() -> None:
    inner = RecordingScorer()
    cached = CachedScorer(inner)
    cached.score(["a"])

    assert await cached.ascore(["a"]) == [expected("a", None)]
    assert len(inner.calls) == 1
    assert await cached.ascore([]) == []


def test_invalid_arguments_rejected() -> None:
    with pytest.raises(ConfigurationError, match="max_size must be an int >= 0, got -1"):
        CachedScorer(RecordingScorer(), max_size=-1)

    with pytest.raises(ConfigurationError, match="needs a Scorer"):
        CachedScorer(lambda text: 0.0)  # type: ignore[arg-type]


def test_prompt_count_mismatch_rejected() -> None:
    with pytest.raises(ValueError, match="2 texts but 1 prompts"):
        CachedScorer(RecordingScorer()).score(["a", "b"], prompts=["p"])


# With a real model


def tiny_classifier() -> ClassifierScorer:
    words = ["[PAD]", "[UNK]", "[CLS]", "hello", "friend", "idiot", "stupid", "you"]
    tokenizer = Tokenizer(models.WordLevel(vocab={word: i for i, word in enumerate(words)}, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="[UNK]", pad_token="[PAD]")
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(words),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
        num_labels=2,
        id2label={0: "neutral", 1: "toxic"},
        label2id={"neutral": 0, "toxic": 1},
    )
    return ClassifierScorer(BertForSequenceClassification(config), tokenizer=fast)


def test_cached_classifier_matches_and_skips_forward() -> None:
    classifier = tiny_classifier()
    direct = classifier.score(["hello friend", "you idiot", "stupid"])
    forwards: list[int] = []
    classifier._ensure_loaded().model.register_forward_hook(lambda module, args, output: forwards.append(1))
    cached = CachedScorer(classifier)

    first = cached.score(["hello friend", "you idiot", "hello friend"])
    second = cached.score(["you idiot", "stupid"])

    def scores(results: list[ModerationResult]) -> list[float]:
        return [result.score for result in results]

    assert scores(first) == pytest.approx(scores([direct[0], direct[1], direct[0]]), abs=1e-6)
    assert scores(second) == pytest.approx(scores([direct[1], direct[2]]), abs=1e-6)
    assert first[0] is first[2]
    assert len(forwards) == 2
    assert cached.texts_scored == 3
    assert cached.name == classifier.name
