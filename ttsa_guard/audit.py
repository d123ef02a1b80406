"""The audit record attached to every guarded response.

It appears as ``AIMessage.response_metadata["ttsa_guard"]`` (a plain dict made
by :meth:`GuardAudit.model_dump`) and in :class:`GuardOutcome`. It holds scores,
counts and timings, never the plain response's text: a flagged text must not
leave the guard through its metadata.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ttsa_guard.moderation.base import ModerationResult

__all__ = ["AUDIT_KEY", "GuardAudit", "GuardOutcome", "GuardStatus", "StepAudit"]

AUDIT_KEY = "ttsa_guard"
"""Key of the audit record in ``AIMessage.response_metadata``."""

GuardStatus = Literal["passed", "corrected", "unresolved", "refused"]


class StepAudit(BaseModel):
    """One optimizer iteration."""

    iteration: int
    score: float
    flagged: bool
    cosine_similarity: float
    generations: int
    scores: int
    seconds: float


class GuardAudit(BaseModel):
    """Record of the guard's work on one call."""

    model_config = ConfigDict(extra="forbid")

    status: GuardStatus
    """``passed``: the plain response was not flagged and is returned unchanged. ``corrected``:
    the optimizer found an unflagged response. ``unresolved``: the budget ran out and the
    least harmful response found is returned (``best_effort`` policy). ``refused``: the
    refusal text is returned (``refuse`` policy, or the scorer failed)."""

    model: str
    scorer: str
    """Scorer that gave the verdicts before and after."""
    search_scorer: str | None = None
    """Scorer that drove the optimizer's search in a scorer cascade; None when ``scorer`` did."""
    score_before: float | None
    """Score of the plain response; None when the scorer failed before returning a score."""
    flagged_before: bool | None
    score_after: float | None
    """Score of the returned text; None for a refusal text that was not scored."""
    flagged_after: bool | None
    categories_after: dict[str, float] = Field(default_factory=dict)
    iterations: int = 0
    generations: int = 0
    """Generations spent, the plain response included."""
    scores: int = 0
    """Texts scored during the call (by the search scorer in a cascade), the plain response included."""
    verifications: int = 0
    """Responses the search scorer passed that went to ``scorer`` for the verdict (cascade only)."""
    seconds: float = 0.0
    cosine_similarity: float | None = None
    """Mean cosine similarity of the steered prompt embeddings to the original (None if not steered)."""
    steered_prompt: str | None = None
    """Nearest-token reading of the steered prompt embeddings (None if not steered)."""
    stop_reason: str | None = None
    """Why the optimizer stopped: resolved, resolved_early, max_iterations, max_generations,
    max_seconds, or scorer_error."""
    failure_policy: str | None = None
    """Policy applied when the response could not be corrected or scored; None otherwise."""
    error: str | None = None
    """Class name of the scorer error that triggered a refusal, if any."""
    history: list[StepAudit] = Field(default_factory=list)


class GuardOutcome(BaseModel):
    """Everything one guarded call produced, for evaluation code.

    Unlike the chat model's output, this includes the plain response even when it was flagged.
    Do not show ``plain_text`` to end users.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    text: str
    """The guarded response: what the chat model returns."""
    plain_text: str
    plain_result: ModerationResult | None
    final_result: ModerationResult | None
    audit: GuardAudit
    input_tokens: int
    output_tokens: int
    extra: dict[str, Any] = Field(default_factory=dict)
