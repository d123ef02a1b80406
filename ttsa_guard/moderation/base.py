"""The scorer protocol shared by every moderation backend.

A scorer maps texts to :class:`ModerationResult` values: a harmfulness score in
[0, 1], a flagged decision and per-category scores. The guard treats a scorer as
a black box, so any callable that follows :class:`Scorer` can drive the
optimizer.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field

from ttsa_guard.errors import ConfigurationError, ScorerError

__all__ = ["BaseScorer", "ModerationResult", "Scorer", "validate_threshold"]


class ModerationResult(BaseModel):
    """The verdict of a scorer on one text."""

    model_config = ConfigDict(frozen=True)

    score: float = Field(ge=0.0, le=1.0)
    """Harmfulness in [0, 1]; higher is more harmful."""

    flagged: bool
    """Whether the scorer judges the text harmful."""

    categories: dict[str, float] = Field(default_factory=dict)
    """Score per category, as the scorer reports them (empty when it has none)."""


@runtime_checkable
class Scorer(Protocol):
    """Anything that scores texts for harmfulness.

    ``prompts`` carries the user prompt that led to each text, for scorers that
    judge a response in its context (guard models). Scorers that judge the text
    alone ignore it. Implementations never mutate their inputs.
    """

    name: str

    def score(
        self, texts: Sequence[str], *, prompts: Sequence[str | None] | None = None
    ) -> list[ModerationResult]: ...

    async def ascore(
        self, texts: Sequence[str], *, prompts: Sequence[str | None] | None = None
    ) -> list[ModerationResult]: ...


def validate_threshold(threshold: float) -> float:
    """Return ``threshold`` if it lies in (0, 1], else raise ConfigurationError."""
    if not 0.0 < threshold <= 1.0:
        msg = f"threshold must be in (0, 1], got {threshold!r}."
        raise ConfigurationError(msg)

    return float(threshold)


class BaseScorer(ABC):
    """Helper base class: checks inputs and outputs, and gives an async twin.

    Subclasses implement :meth:`_score`. The default :meth:`ascore` runs
    :meth:`score` in a worker thread; scorers with real async I/O override it.
    """

    name: str = "scorer"

    def score(
        self, texts: Sequence[str], *, prompts: Sequence[str | None] | None = None
    ) -> list[ModerationResult]:
        """Score ``texts``; ``prompts``, when given, pairs one prompt with each text."""
        texts, prompts = self._check_inputs(texts, prompts)
        if not texts:
            return []

        results = self._score(texts, prompts)
        return self._check_outputs(texts, results)

    async def ascore(
        self, texts: Sequence[str], *, prompts: Sequence[str | None] | None = None
    ) -> list[ModerationResult]:
        """Score ``texts`` without blocking the event loop."""
        return await asyncio.to_thread(self.score, texts, prompts=prompts)

    @abstractmethod
    def _score(self, texts: list[str], prompts: list[str | None]) -> list[ModerationResult]:
        """Score a non-empty list of texts; ``prompts`` has the same length."""

    def _check_inputs(
        self, texts: Sequence[str], prompts: Sequence[str | None] | None
    ) -> tuple[list[str], list[str | None]]:
        if isinstance(texts, str):
            msg = f"{self.name} scorer expects a sequence of texts, got a single str {texts[:40]!r}."
            raise TypeError(msg)

        texts = list(texts)
        for index, text in enumerate(texts):
            if not isinstance(text, str):
                msg = f"{self.name} scorer expects str texts, got {type(text).__name__} at index {index}."
                raise TypeError(msg)

        if prompts is None:
            return texts, [None] * len(texts)

        prompts = list(prompts)
        if len(prompts) != len(texts):
            msg = f"{self.name} scorer got {len(texts)} texts but {len(prompts)} prompts; pass one prompt per text."
            raise ValueError(msg)

        return texts, prompts

    def _check_outputs(self, texts: list[str], results: list[ModerationResult]) -> list[ModerationResult]:
        if len(results) != len(texts):
            msg = f"{self.name} scorer returned {len(results)} results for {len(texts)} texts."
            raise ScorerError(msg, scorer=self.name)

        return results

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"
