"""Adapter that turns a plain Python function into a scorer."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

from ttsa_guard.errors import ScorerError
from ttsa_guard.moderation.base import BaseScorer, ModerationResult, validate_threshold

__all__ = ["FunctionScorer"]


class FunctionScorer(BaseScorer):
    """Wraps ``fn(text) -> score`` or ``fn(text) -> {category: score}`` as a scorer.

    A mapping result is reduced to its largest value. A function that accepts a
    ``prompt`` keyword also receives the prompt that led to the text.

    Args:
        fn: Function from one text to a float in [0, 1] or a mapping of category scores.
        threshold: Score at or above which a text is flagged, in (0, 1]. Default 0.5.
        name: Name shown in audit records. Default: the function's ``__name__``.
    """

    def __init__(
        self,
        fn: Callable[..., float | Mapping[str, float]],
        *,
        threshold: float = 0.5,
        name: str | None = None,
    ) -> None:
        if not callable(fn):
            msg = f"FunctionScorer needs a callable, got {type(fn).__name__}."
            raise TypeError(msg)

        self.fn = fn
        self.threshold = validate_threshold(threshold)
        self.name = name or getattr(fn, "__name__", "function")
        self._pass_prompt = _accepts_keyword(fn, "prompt")

    def _score(self, texts: list[str], prompts: list[str | None]) -> list[ModerationResult]:
        return [self._score_one(text, prompt) for text, prompt in zip(texts, prompts, strict=True)]

    def _score_one(self, text: str, prompt: str | None) -> ModerationResult:
        raw: Any = self.fn(text, prompt=prompt) if self._pass_prompt else self.fn(text)
        if isinstance(raw, Mapping):
            categories = {str(key): self._check_value(value) for key, value in raw.items()}
            score = max(categories.values(), default=0.0)
        else:
            categories = {}
            score = self._check_value(raw)

        return ModerationResult(score=score, flagged=score >= self.threshold, categories=categories)

    def _check_value(self, value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            msg = f"Scorer function {self.name!r} returned {value!r}; expected a float in [0, 1]."
            raise ScorerError(msg, scorer=self.name)

        if not 0.0 <= float(value) <= 1.0:
            msg = f"Scorer function {self.name!r} returned {value!r}; expected a float in [0, 1]."
            raise ScorerError(msg, scorer=self.name)

        return float(value)

    def __repr__(self) -> str:
        return f"FunctionScorer(name={self.name!r}, threshold={self.threshold})"


def _accepts_keyword(fn: Callable[..., Any], keyword: str) -> bool:
    try:
        parameters = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False

    if keyword in parameters:
        return True

    return any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
