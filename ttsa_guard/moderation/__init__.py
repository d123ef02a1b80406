"""Moderation scorers: the protocol, the embedded offline scorer and adapters.

Pick a scorer by name with :func:`load_scorer`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ttsa_guard.errors import ConfigurationError
from ttsa_guard.moderation.base import BaseScorer, ModerationResult, Scorer
from ttsa_guard.moderation.function import FunctionScorer
from ttsa_guard.moderation.profanity import ProfanityScorer

__all__ = [
    "BaseScorer",
    "FunctionScorer",
    "ModerationResult",
    "ProfanityScorer",
    "Scorer",
    "SCORER_NAMES",
    "load_scorer",
]

SCORER_NAMES = ("profanity",)
"""Names accepted by :func:`load_scorer`."""


def load_scorer(spec: str | Scorer | Callable[..., Any], **options: Any) -> Scorer:
    """Return a scorer from a name, a scorer instance, or a plain function.

    Args:
        spec: ``"profanity"`` (the embedded offline scorer), a :class:`Scorer`, or a function
            accepted by :class:`FunctionScorer`.
        options: Keyword arguments for the scorer's constructor.
    """
    if isinstance(spec, Scorer):
        return spec

    if callable(spec):
        return FunctionScorer(spec, **options)

    if not isinstance(spec, str):
        msg = f"scorer must be a name, a Scorer or a function, got {type(spec).__name__}."
        raise ConfigurationError(msg)

    name = spec.strip()
    if name == "profanity":
        return ProfanityScorer(**options)

    msg = f"Unknown scorer {spec!r}. Accepted: {', '.join(SCORER_NAMES)}, a Scorer instance or a function."
    raise ConfigurationError(msg)
