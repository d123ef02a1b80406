"""The embedded offline scorer: the ``alt-profanity-check`` linear model.

The model ships inside its wheel, so it needs no network and no API key. It
was trained on about 200k labelled comments and scores offensive and profane
language. It does not recognize semantic harm, such as dangerous instructions
written in polite words. For that, use the OpenAI Moderation API, a local
classifier or a guard model.
"""

from __future__ import annotations

import threading
from typing import Any

from ttsa_guard.errors import ModelLoadError
from ttsa_guard.moderation.base import BaseScorer, ModerationResult, validate_threshold

__all__ = ["ProfanityScorer"]

_CATEGORY = "profanity"


class ProfanityScorer(BaseScorer):
    """Scores texts with the offline profanity model from ``alt-profanity-check``.

    Args:
        threshold: Score at or above which a text is flagged, in (0, 1]. Default 0.5.
    """

    name = "profanity"

    def __init__(self, threshold: float = 0.5) -> None:
        self.threshold = validate_threshold(threshold)
        self._predict_prob: Any = None
        self._lock = threading.Lock()

    def _load(self) -> Any:
        with self._lock:
            if self._predict_prob is None:
                try:
                    from profanity_check import predict_prob
                except ImportError as exc:
                    msg = "The profanity scorer needs alt-profanity-check: pip install alt-profanity-check"
                    raise ModelLoadError(msg) from exc
                self._predict_prob = predict_prob

        return self._predict_prob

    def _score(self, texts: list[str], prompts: list[str | None]) -> list[ModerationResult]:
        probabilities = self._load()(texts)
        results = []
        for probability in probabilities:
            score = min(max(float(probability), 0.0), 1.0)
            results.append(
                ModerationResult(score=score, flagged=score >= self.threshold, categories={_CATEGORY: score})
            )

        return results

    def __repr__(self) -> str:
        return f"ProfanityScorer(threshold={self.threshold})"
