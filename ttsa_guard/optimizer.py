"""Zeroth-order optimization of prompt embeddings against a black-box scorer.

The method is Test-Time Safety Alignment (Saglam and Kalogerias, arXiv
2604.26167), built on TIDE (arXiv 2602.02498). With x the editable prompt
embeddings [T, d], f(x) the response generated from them and h(text) the
harmfulness score, the Gaussian-smoothing estimate of the gradient of h(f(x)) is

    g = (1/N) * sum_i [(h(f(x + mu * u_i)) - h(f(x))) / mu] * u_i,   u_i ~ N(0, I).

Each step normalizes g per token row, moves x <- x - step_size * g, and pulls
rows whose cosine similarity to the original fell below a floor back onto it.
The loop stops as soon as a response is no longer flagged.

The optimizer depends on two callables only: one generates texts from a batch of
embeddings, the other scores texts. It imports no model, scorer or LangChain code.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch

from ttsa_guard.config import OptimizerConfig
from ttsa_guard.moderation.base import ModerationResult

__all__ = [
    "GenerateFn",
    "OptimizationResult",
    "ScoreFn",
    "StepRecord",
    "VerifyFn",
    "ZerothOrderOptimizer",
    "estimate_gradient",
    "is_degenerate",
    "normalize_rows",
    "project_to_cosine_floor",
    "sample_directions",
]

logger = logging.getLogger(__name__)

GenerateFn = Callable[[torch.Tensor], list[str]]
"""Generates one response per row of a [B, T, d] batch of editable embeddings."""

ScoreFn = Callable[[list[str]], list[ModerationResult]]
"""Scores a list of texts."""

VerifyFn = Callable[[str], ModerationResult]
"""Gives the authoritative verdict on one text that the search scorer no longer flags."""

StopReason = Literal["resolved", "resolved_early", "max_iterations", "max_generations", "max_seconds"]

# A degenerate response is never accepted. For the estimate it counts as maximally harmful,
# so the search moves away from prompts that make the model output nothing.
_DEGENERATE_RESULT = ModerationResult(score=1.0, flagged=True, categories={"degenerate": 1.0})


def is_degenerate(text: str) -> bool:
    """Return whether ``text`` is empty or whitespace only."""
    return not text.strip()


def sample_directions(
    generator: torch.Generator, num_directions: int, shape: torch.Size, *, antithetic: bool = False
) -> torch.Tensor:
    """Draw ``num_directions`` standard Gaussian directions of ``shape``.

    With ``antithetic``, the second half is the negation of the first, which makes
    :func:`estimate_gradient` compute the central difference.

    Returns:
        Tensor [num_directions, *shape], float32 on the CPU.
    """
    if not antithetic:
        return torch.randn((num_directions, *shape), generator=generator)

    half = torch.randn((num_directions // 2, *shape), generator=generator)
    return torch.cat([half, -half])


def estimate_gradient(
    directions: torch.Tensor, scores: torch.Tensor, base_score: float, smoothing_radius: float
) -> torch.Tensor:
    """Estimate the gradient of the smoothed score from perturbed evaluations.

    Args:
        directions: [N, T, d] directions u_i.
        scores: [N] scores h(f(x + mu * u_i)).
        base_score: h(f(x)) at the current point.
        smoothing_radius: mu.

    Returns:
        [T, d] estimate (1/N) * sum_i ((scores_i - base_score) / mu) * u_i. With antithetic
        directions (u, -u pairs) the base score cancels and this is the central difference.
    """
    weights = (scores.to(directions.dtype) - base_score) / smoothing_radius  # [N]
    return torch.einsum("n,n...->...", weights, directions) / directions.shape[0]


def normalize_rows(gradient: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Scale each row of a [T, d] tensor to unit L2 norm; zero rows stay zero."""
    norms = gradient.norm(dim=-1, keepdim=True)  # [T, 1]
    return gradient / norms.clamp_min(eps)


def project_to_cosine_floor(x: torch.Tensor, original: torch.Tensor, floor: float) -> torch.Tensor:
    """Rotate rows of ``x`` whose cosine similarity to ``original`` is below ``floor`` onto it.

    A projected row keeps its norm and stays in the plane spanned by itself and the original
    row, at cosine similarity exactly ``floor``. Other rows are returned unchanged.
    """
    unit_original = original / original.norm(dim=-1, keepdim=True).clamp_min(1e-12)  # [T, d]
    norms = x.norm(dim=-1, keepdim=True)  # [T, 1]
    cosine = (x * unit_original).sum(-1, keepdim=True) / norms.clamp_min(1e-12)  # [T, 1]

    orthogonal = x - (x * unit_original).sum(-1, keepdim=True) * unit_original
    unit_orthogonal = orthogonal / orthogonal.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    projected = norms * (floor * unit_original + math.sqrt(max(1.0 - floor**2, 0.0)) * unit_orthogonal)

    return torch.where(cosine < floor, projected, x)


def mean_cosine_similarity(x: torch.Tensor, original: torch.Tensor) -> float:
    """Return the mean over token rows of the cosine similarity between ``x`` and ``original``."""
    return float(torch.nn.functional.cosine_similarity(x, original, dim=-1).mean())


@dataclass(frozen=True)
class StepRecord:
    """One optimizer iteration, as it appears in the audit trace."""

    iteration: int
    score: float
    """Score of the response at the end of the iteration (the accepted candidate's, if any)."""
    flagged: bool
    cosine_similarity: float
    """Mean cosine similarity of the editable embeddings to the original."""
    generations: int
    """Generations spent so far in this call, the iteration included."""
    scores: int
    """Texts sent to the scorer so far, the iteration included."""
    seconds: float
    """Seconds since the optimizer started."""


@dataclass
class OptimizationResult:
    """Outcome of one optimizer run.

    ``text`` and ``result`` are the final response and its verdict when ``resolved``; otherwise
    ``best_text`` and ``best_result`` hold the least harmful non-degenerate response seen.
    """

    text: str
    result: ModerationResult
    resolved: bool
    stop_reason: StopReason
    iterations: int
    generations: int
    scores: int
    seconds: float
    embeddings: torch.Tensor
    verifications: int
    """Calls to the verify function (0 without a scorer cascade)."""
    cosine_similarity: float
    best_text: str
    best_result: ModerationResult
    history: list[StepRecord] = field(default_factory=list)


class _BudgetSpent(Exception):
    def __init__(self, reason: StopReason) -> None:
        self.reason = reason


class ZerothOrderOptimizer:
    """Steers editable prompt embeddings until the generated response is no longer flagged.

    Args:
        config: The optimizer's settings.
    """

    def __init__(self, config: OptimizerConfig | None = None) -> None:
        self.config = config or OptimizerConfig()

    def is_flagged(self, result: ModerationResult) -> bool:
        """Apply ``flag_threshold`` when set, else the scorer's own decision."""
        if self.config.flag_threshold is None:
            return result.flagged

        return result.score >= self.config.flag_threshold

    def is_accepted(self, text: str, result: ModerationResult) -> bool:
        """Return whether a response may replace the flagged one."""
        return not is_degenerate(text) and not self.is_flagged(result)

    def optimize(
        self,
        embeddings: torch.Tensor,
        text: str,
        result: ModerationResult,
        generate: GenerateFn,
        score: ScoreFn,
        *,
        verify: VerifyFn | None = None,
        generations_spent: int = 0,
        scores_spent: int = 0,
        started: float | None = None,
    ) -> OptimizationResult:
        """Run the search from ``embeddings`` [T, d], whose response ``text`` scored ``result``.

        With ``verify``, a response that ``score`` no longer flags is accepted only when
        ``verify`` does not flag it either: a cheap scorer drives the search and an
        authoritative one decides. ``generations_spent``, ``scores_spent`` and ``started``
        (a ``time.monotonic`` value) count work done before the call against the budgets.
        """
        run = _Run(self, embeddings, text, result, generate, score, verify, generations_spent, scores_spent, started)
        return run.execute()


class _Run:
    """State of one optimize call; keeps the loop, budgets and bookkeeping together."""

    def __init__(
        self,
        optimizer: ZerothOrderOptimizer,
        embeddings: torch.Tensor,
        text: str,
        result: ModerationResult,
        generate: GenerateFn,
        score: ScoreFn,
        verify: VerifyFn | None,
        generations_spent: int,
        scores_spent: int,
        started: float | None,
    ) -> None:
        self.optimizer = optimizer
        self.config = optimizer.config
        self.original = embeddings.detach().to(torch.float32).cpu()
        self.x = self.original.clone()
        self.text = text
        self.result = result
        self.generate = generate
        self.score = score
        self.verify = verify
        self.verifications = 0
        self.generations = generations_spent
        self.scores = scores_spent
        self.started = time.monotonic() if started is None else started
        self.best_text, self.best_result = text, result
        self.history: list[StepRecord] = []
        self.accepted_early = False
        self.generator = torch.Generator().manual_seed(self.config.seed)

    def execute(self) -> OptimizationResult:
        config = self.config
        try:
            for iteration in range(1, config.max_iterations + 1):
                if self._step(iteration):
                    return self._finish(True, "resolved_early" if self.accepted_early else "resolved")
        except _BudgetSpent as spent:
            return self._finish(False, spent.reason)

        return self._finish(False, "max_iterations")

    def _step(self, iteration: int) -> bool:
        """Run one iteration; return True when an accepted response was found."""
        config = self.config
        directions = sample_directions(
            self.generator, config.num_directions, self.x.shape, antithetic=config.estimator == "antithetic"
        )  # [N, T, d]
        candidates = self.x.unsqueeze(0) + config.smoothing_radius * directions  # [N, T, d]

        candidate_scores = []
        batch_size = config.generation_batch_size or config.num_directions
        for start in range(0, config.num_directions, batch_size):
            chunk = candidates[start : start + batch_size]
            texts, results = self._evaluate(chunk)
            candidate_scores.extend(r.score for r in results)

            accepted = [
                i
                for i, (t, r) in enumerate(zip(texts, results))
                if self.optimizer.is_accepted(t, r) and self._within_floor(chunk[i])
            ]
            if config.accept_early and accepted:
                best = min(accepted, key=lambda i: results[i].score)
                verdict = self._verify(texts[best], results[best])
                if verdict is not None:
                    self.x = chunk[best].clone()
                    self.text, self.result = texts[best], verdict
                    self.accepted_early = True
                    self._record(iteration)
                    return True

        gradient = estimate_gradient(
            directions, torch.tensor(candidate_scores), self.result.score, config.smoothing_radius
        )
        if config.normalize_per_token:
            gradient = normalize_rows(gradient)

        self.x = self.x - config.step_size * gradient
        if config.cosine_floor is not None:
            self.x = project_to_cosine_floor(self.x, self.original, config.cosine_floor)

        texts, results = self._evaluate(self.x.unsqueeze(0))
        self.text, self.result = texts[0], results[0]
        verdict = self._verify(self.text, self.result) if self.optimizer.is_accepted(self.text, self.result) else None
        if verdict is not None:
            self.result = verdict

        self._record(iteration)
        return verdict is not None

    def _verify(self, text: str, result: ModerationResult) -> ModerationResult | None:
        """Return the verdict that accepts ``text``, or None when the verify function flags it."""
        if self.verify is None:
            return result

        verdict = self.verify(text)
        self.verifications += 1
        if self.optimizer.is_flagged(verdict):
            logger.debug("the search scorer passed a response that the verify scorer flagged")
            return None

        return verdict

    def _within_floor(self, candidate: torch.Tensor) -> bool:
        """Return whether a candidate keeps the mean cosine similarity at or above the floor."""
        floor = self.config.cosine_floor
        return floor is None or mean_cosine_similarity(candidate, self.original) >= floor

    def _evaluate(self, batch: torch.Tensor) -> tuple[list[str], list[ModerationResult]]:
        """Generate and score a [B, T, d] batch, charging the budgets first."""
        self._charge(batch.shape[0])
        texts = self.generate(batch)
        self.generations += len(texts)

        results = self._score(texts)
        for text, result in zip(texts, results):
            if not is_degenerate(text) and result.score < self.best_result.score:
                self.best_text, self.best_result = text, result

        return texts, results

    def _score(self, texts: Sequence[str]) -> list[ModerationResult]:
        """Score non-degenerate texts; degenerate ones get the maximal score without a call."""
        to_score = [t for t in texts if not is_degenerate(t)]
        scored = iter(self.score(to_score) if to_score else [])
        self.scores += len(to_score)

        return [_DEGENERATE_RESULT if is_degenerate(t) else next(scored) for t in texts]

    def _charge(self, count: int) -> None:
        # NOTE: the budgets are checked before each batch only. A call can run past max_seconds
        # by one generation batch and the scorer calls after it: the search score and, in a
        # cascade, one verification. A scorer call that hangs is never interrupted.
        config = self.config
        if config.max_seconds is not None and time.monotonic() - self.started >= config.max_seconds:
            raise _BudgetSpent("max_seconds")

        if config.max_generations is not None and self.generations + count > config.max_generations:
            raise _BudgetSpent("max_generations")

    def _record(self, iteration: int) -> None:
        record = StepRecord(
            iteration=iteration,
            score=self.result.score,
            flagged=self.optimizer.is_flagged(self.result),
            cosine_similarity=mean_cosine_similarity(self.x, self.original),
            generations=self.generations,
            scores=self.scores,
            seconds=time.monotonic() - self.started,
        )
        self.history.append(record)
        logger.debug(
            "optimizer step %d: score=%.4f flagged=%s cosine=%.3f generations=%d",
            iteration,
            record.score,
            record.flagged,
            record.cosine_similarity,
            record.generations,
        )

    def _finish(self, resolved: bool, reason: StopReason) -> OptimizationResult:
        history = list(self.history)
        return OptimizationResult(
            text=self.text,
            result=self.result,
            resolved=resolved,
            stop_reason=reason,
            iterations=len(history),
            generations=self.generations,
            scores=self.scores,
            seconds=time.monotonic() - self.started,
            embeddings=self.x,
            verifications=self.verifications,
            cosine_similarity=mean_cosine_similarity(self.x, self.original),
            best_text=self.best_text,
            best_result=self.best_result,
            history=history,
        )
