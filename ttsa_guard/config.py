"""Validated settings for generation, the optimizer and the guard.

Each concern has its own pydantic model with ``extra="forbid"``, bounds on every
number and cross-field checks at construction. A validation failure raises
:class:`~ttsa_guard.errors.ConfigurationError` (a ``ValueError``) that names the
field, the value and the accepted range.
"""

from __future__ import annotations

import logging
from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ttsa_guard.errors import ConfigurationError

__all__ = ["GenerationConfig", "GuardConfig", "OptimizerConfig", "build_config", "describe_validation_error"]

logger = logging.getLogger(__name__)


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise ConfigurationError(describe_validation_error(type(self).__name__, exc)) from exc


def describe_validation_error(model: str, exc: ValidationError) -> str:
    """Summarize a pydantic error as ``model.field=value: reason`` parts, without pydantic's URLs."""
    parts = []
    for error in exc.errors():
        message = error["msg"].removeprefix("Value error, ").removeprefix("Invalid settings: ")
        if error["type"] == "extra_forbidden":
            message = "unknown setting; check its spelling against the documented fields"
        if not error["loc"]:
            parts.append(message)
            continue

        field = ".".join(str(item) for item in error["loc"])
        parts.append(f"{model}.{field}={error.get('input')!r}: {message}")

    return "Invalid settings: " + "; ".join(parts)


def build_config(cls: type[_Config], value: Any) -> Any:
    """Coerce ``value`` (None, a mapping or an instance) to ``cls``."""
    if value is None:
        return cls()

    if isinstance(value, cls):
        return value

    if isinstance(value, dict):
        return cls(**value)

    msg = f"Expected {cls.__name__} or a dict of its fields, got {type(value).__name__}."
    raise ConfigurationError(msg)


class GenerationConfig(_Config):
    """Decoding settings of the chat model."""

    max_new_tokens: int = Field(default=48, ge=1, le=8192)
    """Maximum tokens per response. Default 48. Every perturbed evaluation generates this many
    tokens at most, so it sets most of the cost of a correction."""

    temperature: float = Field(default=0.0, ge=0.0, le=5.0)
    """Sampling temperature; 0 (default) is greedy decoding, which makes the response a
    deterministic function of the prompt embeddings, as the zeroth-order estimate assumes."""

    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    """Nucleus sampling mass, used only when temperature > 0. Default 1.0 (no truncation)."""

    stop: list[str] = Field(default_factory=list)
    """Stop strings: generation ends at the first one, which is cut from the response."""

    seed: int = Field(default=0, ge=0)
    """Seed for sampling when temperature > 0. Default 0."""

    reuse_prefix_cache: bool = True
    """Encode the fixed prompt prefix once and reuse its key-value cache across the perturbed
    batch and the iterations. Default True; the reference mode turns it off."""

    drop_finished: bool = True
    """Remove sequences that reached end-of-sequence or a stop string from the decoding batch.
    Default True; the reference mode turns it off."""

    @model_validator(mode="after")
    def _check_stop(self) -> Self:
        if any(not isinstance(s, str) or s == "" for s in self.stop):
            msg = f"GenerationConfig.stop={self.stop!r}: stop strings must be non-empty."
            raise ValueError(msg)

        return self


class OptimizerConfig(_Config):
    """Knobs of the zeroth-order embedding optimizer.

    TIDE published 10 iterations, 16 directions, radius 0.03, step 0.3, cosine floor 0.2 and
    threshold 0.5 for an 8B model. The defaults here suit the embedded 135M model, whose
    embeddings need a larger radius and step to change its greedy response.
    """

    num_directions: int = Field(default=16, ge=1, le=4096)
    """Random Gaussian directions N per gradient estimate. Default 16; 8 to 32 is typical. Each
    costs one generation and one score."""

    smoothing_radius: float = Field(default=0.5, gt=0.0, le=100.0)
    """Gaussian smoothing radius mu: perturbations are x + mu * u with u ~ N(0, I). Default 0.5
    for the embedded model; about 0.03 for 8B models."""

    step_size: float = Field(default=0.5, gt=0.0, le=100.0)
    """Length of each step along the normalized gradient estimate. Default 0.5; 0.3 for 8B models."""

    estimator: Literal["forward", "antithetic"] = "forward"
    """``forward``: N directions against the current point (N + 1 evaluations). ``antithetic``:
    N / 2 directions, each evaluated at +u and -u, which equals the central difference and
    lowers the variance for the same N."""

    normalize_per_token: bool = True
    """Scale each token's row of the gradient estimate to unit L2 norm before stepping."""

    cosine_floor: float | None = Field(default=0.2, ge=-1.0, le=1.0)
    """Minimum cosine similarity of each steered token embedding to its original; rows that fall
    below are pulled back onto the floor. None disables the projection. Default 0.2."""

    flag_threshold: float | None = Field(default=None, gt=0.0, le=1.0)
    """Score at or above which a response counts as flagged. None (default) uses the scorer's own
    ``flagged`` decision."""

    max_iterations: int = Field(default=10, ge=1, le=1000)
    """Optimizer steps before the failure policy applies. Default 10."""

    seed: int = Field(default=0, ge=0)
    """Seed of the random directions. The same seed and settings give the same response."""

    accept_early: bool = True
    """Accept a perturbed candidate at once when its response is no longer flagged and its mean
    cosine similarity to the original is at least ``cosine_floor``, instead of waiting for the
    next step's response. Default True; the reference mode turns it off."""

    generation_batch_size: int | None = Field(default=None, ge=1, le=4096)
    """Perturbed prompts generated per batch. None (default) generates all N together; 1 is the
    one-by-one reference loop."""

    max_generations: int | None = Field(default=None, ge=1)
    """Cap on generations per guarded call, the plain response included. None: no cap."""

    max_seconds: float | None = Field(default=None, gt=0.0)
    """Wall-clock budget per guarded call in seconds. None: no limit."""

    @model_validator(mode="after")
    def _check_estimator(self) -> Self:
        if self.estimator == "antithetic" and self.num_directions % 2:
            msg = (
                f"OptimizerConfig.num_directions={self.num_directions}: the antithetic estimator "
                "pairs each direction with its negation, so num_directions must be even."
            )
            raise ValueError(msg)

        return self

    @classmethod
    def reference(cls, **overrides: Any) -> OptimizerConfig:
        """Return the plain published algorithm: one-by-one generations, no early acceptance."""
        settings: dict[str, Any] = {"accept_early": False, "generation_batch_size": 1}
        settings.update(overrides)
        return cls(**settings)


class GuardConfig(_Config):
    """Failure policies and the score cache around the optimizer."""

    failure_policy: Literal["refuse", "best_effort", "raise"] = "refuse"
    """Policy for a response that stays flagged after the budget. ``refuse``
    (default) returns ``refusal_text``; ``best_effort`` returns the least harmful response
    found, marked unresolved in the audit record; ``raise`` raises CorrectionFailedError."""

    refusal_text: str = Field(default="I can't help with that request.", min_length=1)
    """Text returned by the ``refuse`` policies."""

    score_cache_size: int | None = Field(default=4096, ge=0)
    """Recent (text, prompt) scores kept in memory, so repeated responses are scored once.
    0 only merges identical texts within one scorer call; None (the reference mode) scores
    every text. Default 4096."""

    scorer_failure_policy: Literal["raise", "refuse"] = "raise"
    """Action when the scorer fails to return a score: ``raise`` (default) a ScorerError, or return
    ``refusal_text``. The guard never returns an unscored response."""
