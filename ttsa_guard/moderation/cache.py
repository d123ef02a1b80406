"""A least-recently-used cache in front of any scorer.

The optimizer scores many perturbed generations, and greedy decoding often turns
nearby prompt embeddings into the same response. :class:`CachedScorer` sends each
distinct (text, prompt) pair to the wrapped scorer once and returns repeats from
memory.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence

from ttsa_guard.errors import ConfigurationError, ScorerError
from ttsa_guard.moderation.base import BaseScorer, ModerationResult, Scorer

__all__ = ["CachedScorer"]

_Key = tuple[str, str | None]


class CachedScorer(BaseScorer):
    """Wraps a scorer with a bounded LRU cache of (text, prompt) -> result.

    Identical (text, prompt) pairs within one call reach the wrapped scorer once, and pairs
    scored by earlier calls are returned from the cache. The prompt is part of the key
    because guard models judge a response in its context. Results are frozen pydantic
    models, so callers share cached instances safely.

    The cache is thread-safe. The wrapped scorer runs outside the lock, so two threads
    that miss the same pair at the same moment may both score it. A failed call caches
    nothing.

    Args:
        scorer: The scorer to wrap.
        max_size: Maximum pairs kept, >= 0. Default 4096. With 0, the wrapper only merges
            repeats within one call.

    Attributes:
        hits: Texts whose result came from the cache.
        misses: Texts not found in the cache, repeats within one call included;
            ``hits + misses`` is the number of texts requested.
        calls: Calls made to the wrapped scorer, failed ones included.
        texts_scored: Texts sent to the wrapped scorer, failed calls included.
    """

    def __init__(self, scorer: Scorer, max_size: int = 4096) -> None:
        if not isinstance(scorer, Scorer):
            msg = f"CachedScorer needs a Scorer (with name, score and ascore), got {type(scorer).__name__}."
            raise ConfigurationError(msg)

        if isinstance(max_size, bool) or not isinstance(max_size, int) or max_size < 0:
            msg = f"max_size must be an int >= 0, got {max_size!r}."
            raise ConfigurationError(msg)

        self.scorer = scorer
        self.name = scorer.name
        self.max_size = max_size
        self._cache: OrderedDict[_Key, ModerationResult] = OrderedDict()
        self._lock = threading.Lock()
        self._hits = 0
        self._misses = 0
        self._calls = 0
        self._texts_scored = 0

    @property
    def hits(self) -> int:
        return self._hits

    @property
    def misses(self) -> int:
        return self._misses

    @property
    def calls(self) -> int:
        return self._calls

    @property
    def texts_scored(self) -> int:
        return self._texts_scored

    def __len__(self) -> int:
        return len(self._cache)

    def clear(self) -> None:
        """Empty the cache. The counters keep their values."""
        with self._lock:
            self._cache.clear()

    def _score(self, texts: list[str], prompts: list[str | None]) -> list[ModerationResult]:
        keys = list(zip(texts, prompts, strict=True))
        found, missing = self._lookup(keys)
        if missing:
            missing_texts, missing_prompts = self._split(missing)
            scored = self.scorer.score(missing_texts, prompts=missing_prompts)
            found.update(self._store(missing, scored))

        return [found[key] for key in keys]

    async def ascore(
        self, texts: Sequence[str], *, prompts: Sequence[str | None] | None = None
    ) -> list[ModerationResult]:
        """Score ``texts`` through the wrapped scorer's ``ascore``, using the cache."""
        texts, prompts = self._check_inputs(texts, prompts)
        if not texts:
            return []

        keys = list(zip(texts, prompts, strict=True))
        found, missing = self._lookup(keys)
        if missing:
            missing_texts, missing_prompts = self._split(missing)
            scored = await self.scorer.ascore(missing_texts, prompts=missing_prompts)
            found.update(self._store(missing, scored))

        return self._check_outputs(texts, [found[key] for key in keys])

    def _lookup(self, keys: list[_Key]) -> tuple[dict[_Key, ModerationResult], list[_Key]]:
        """Return the cached results and the distinct keys still to score, in first-seen order."""
        found: dict[_Key, ModerationResult] = {}
        missing: dict[_Key, None] = {}
        with self._lock:
            for key in keys:
                result = self._cache.get(key)
                if result is None:
                    missing[key] = None
                    self._misses += 1
                    continue

                self._cache.move_to_end(key)
                found[key] = result
                self._hits += 1

            # Counted here, before the call, so that failed calls count too.
            if missing:
                self._calls += 1
                self._texts_scored += len(missing)

        return found, list(missing)

    @staticmethod
    def _split(keys: list[_Key]) -> tuple[list[str], list[str | None] | None]:
        texts = [text for text, _ in keys]
        prompts = [prompt for _, prompt in keys]
        # Scorers that ignore prompts then see the same call as without a cache.
        return texts, None if all(prompt is None for prompt in prompts) else prompts

    def _store(self, keys: list[_Key], results: list[ModerationResult]) -> dict[_Key, ModerationResult]:
        if len(results) != len(keys):
            msg = f"{self.name} scorer returned {len(results)} results for {len(keys)} texts."
            raise ScorerError(msg, scorer=self.name)

        with self._lock:
            for key, result in zip(keys, results, strict=True):
                self._cache[key] = result
                self._cache.move_to_end(key)

            while len(self._cache) > self.max_size:
                self._cache.popitem(last=False)

        return dict(zip(keys, results, strict=True))

    def __repr__(self) -> str:
        return f"CachedScorer({self.scorer!r}, max_size={self.max_size})"
