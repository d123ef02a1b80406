"""Moderation scorers: the protocol, the embedded offline scorer, remote and local models.

Pick a scorer by name with :func:`load_scorer`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ttsa_guard.errors import ConfigurationError
from ttsa_guard.moderation.base import BaseScorer, ModerationResult, Scorer
from ttsa_guard.moderation.cache import CachedScorer
from ttsa_guard.moderation.classifier import ClassifierScorer
from ttsa_guard.moderation.function import FunctionScorer
from ttsa_guard.moderation.guard_model import GuardModelScorer
from ttsa_guard.moderation.openai import OpenAIModerationScorer, OpenAIModerationSettings
from ttsa_guard.moderation.profanity import ProfanityScorer

__all__ = [
    "BaseScorer",
    "CachedScorer",
    "ClassifierScorer",
    "FunctionScorer",
    "GuardModelScorer",
    "ModerationResult",
    "OpenAIModerationScorer",
    "OpenAIModerationSettings",
    "ProfanityScorer",
    "Scorer",
    "SCORER_NAMES",
    "load_scorer",
]

SCORER_NAMES = ("profanity", "openai", "classifier:<model id or path>", "guard:<model id or path>")
"""Name forms accepted by :func:`load_scorer`."""


def load_scorer(spec: str | Scorer | Callable[..., Any], **options: Any) -> Scorer:
    """Return a scorer from a name, a scorer instance, or a plain function.

    Args:
        spec: One of

            * ``"profanity"``: the embedded offline scorer (:class:`ProfanityScorer`);
            * ``"openai"``: an OpenAI-compatible moderation API (:class:`OpenAIModerationScorer`);
            * ``"classifier:<model id or path>"``: a sequence classifier (:class:`ClassifierScorer`);
            * ``"guard:<model id or path>"``: a chat guard model (:class:`GuardModelScorer`);
            * a :class:`Scorer`, returned as is;
            * a function accepted by :class:`FunctionScorer`.
        options: Keyword arguments for the scorer's constructor.

    Raises:
        ConfigurationError: The name is unknown, or a model name lacks its id or path.
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

    if name == "openai":
        return OpenAIModerationScorer(**options)

    kind, separator, source = name.partition(":")
    model_scorers: dict[str, Callable[..., Scorer]] = {"classifier": ClassifierScorer, "guard": GuardModelScorer}
    if separator and kind in model_scorers:
        if not source.strip():
            msg = f"Scorer {spec!r} lacks a model: write {kind}:<model id or path>, such as {kind}:./my-model."
            raise ConfigurationError(msg)

        return model_scorers[kind](source.strip(), **options)

    msg = f"Unknown scorer {spec!r}. Accepted: {', '.join(SCORER_NAMES)}, a Scorer instance or a function."
    raise ConfigurationError(msg)
