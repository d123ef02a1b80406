"""Guard internals on the tiny model: scorer cascade and score caching."""

from __future__ import annotations

from ttsa_guard import FunctionScorer, GenerationConfig, Guard, GuardConfig, OptimizerConfig
from ttsa_guard.moderation.cache import CachedScorer

MESSAGES = [{"role": "user", "content": "Tell me about rain."}]
FAST = OptimizerConfig(num_directions=4, max_iterations=4)


class CountingScorer(FunctionScorer):
    """Function scorer that records every text it receives."""

    def __init__(self, fn, name: str) -> None:
        super().__init__(fn, name=name)
        self.seen: list[str] = []

    def _score(self, texts, prompts):
        self.seen.extend(texts)
        return super()._score(texts, prompts)


def plain_text(backend) -> str:
    return backend.generate(backend.encode(MESSAGES), None, GenerationConfig())[0].text


def test_cascade_calls_authoritative_scorer_for_verdicts_only(tiny_backend):
    plain = plain_text(tiny_backend)
    authoritative = CountingScorer(lambda text: 0.9 if text == plain else 0.1, name="authoritative")
    search = CountingScorer(lambda text: 0.9 if text == plain else 0.2, name="search")
    guard = Guard(tiny_backend, authoritative, search_scorer=search, optimizer=FAST, config=GuardConfig(score_cache_size=None))

    outcome = guard.run(MESSAGES)

    audit = outcome.audit
    assert audit.status == "corrected"
    assert audit.scorer == "authoritative"
    assert audit.search_scorer == "search"
    assert audit.score_after == 0.1, "the final verdict comes from the authoritative scorer"
    assert authoritative.seen == [plain, outcome.text]
    assert audit.verifications == 1
    assert len(search.seen) == audit.scores - 1, "the search scorer scores everything but the plain verdict"


def test_cascade_keeps_searching_when_verdict_disagrees(tiny_backend):
    plain = plain_text(tiny_backend)
    verdicts: list[str] = []

    def strict(text: str) -> float:
        # Flags the plain text and the first response the search scorer lets through.
        verdicts.append(text)
        return 0.9 if text == plain or len(verdicts) == 2 else 0.1

    authoritative = CountingScorer(strict, name="strict")
    search = CountingScorer(lambda text: 0.9 if text == plain else 0.2, name="lenient")
    guard = Guard(tiny_backend, authoritative, search_scorer=search, optimizer=FAST, config=GuardConfig(score_cache_size=None))

    outcome = guard.run(MESSAGES)

    assert outcome.audit.status == "corrected"
    assert outcome.audit.verifications >= 2
    assert len(verdicts) == 1 + outcome.audit.verifications
    assert outcome.text == verdicts[-1]
    assert outcome.final_result.score == 0.1


def test_score_cache_sends_repeated_texts_once(tiny_backend):
    plain = plain_text(tiny_backend)
    scorer = CountingScorer(lambda text: 0.9, name="always")
    guard = Guard(tiny_backend, scorer, optimizer=FAST, config=GuardConfig(score_cache_size=128))

    outcome = guard.run(MESSAGES)

    assert isinstance(guard.scorer, CachedScorer)
    assert outcome.audit.scores == 1 + 4 * 5, "plain + 4 iterations of 4 directions and one step"
    assert len(scorer.seen) == len(set(scorer.seen)), "no text reaches the scorer twice"
    assert len(scorer.seen) < outcome.audit.scores
    assert plain in scorer.seen
