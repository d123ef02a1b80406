"""The zeroth-order optimizer against black boxes whose scores are known functions of x."""

from __future__ import annotations

import math

import pytest
import torch

from ttsa_guard.config import OptimizerConfig
from ttsa_guard.moderation.base import ModerationResult
from ttsa_guard.optimizer import (
    ZerothOrderOptimizer,
    estimate_gradient,
    normalize_rows,
    project_to_cosine_floor,
    sample_directions,
)

SHAPE = (3, 8)


def test_estimate_gradient_exact_on_basis_directions():
    # With u_i the coordinate directions and h linear, each weight (h_i - h0) / mu = a_i exactly.
    slope = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    directions = torch.eye(6).reshape(6, 2, 3)
    scores = torch.tensor([0.1 + 0.5 * float((slope * u).sum()) for u in directions])

    estimate = estimate_gradient(directions, scores, base_score=0.1, smoothing_radius=0.5)

    torch.testing.assert_close(estimate, slope / 6)


@pytest.mark.parametrize("antithetic", [False, True])
def test_estimate_gradient_recovers_linear_gradient(antithetic):
    generator = torch.Generator().manual_seed(0)
    slope = torch.randn(SHAPE, generator=generator)
    directions = sample_directions(generator, 20000, torch.Size(SHAPE), antithetic=antithetic)
    mu = 0.1
    scores = 2.0 + mu * torch.einsum("nij,ij->n", directions, slope)

    estimate = estimate_gradient(directions, scores, base_score=2.0, smoothing_radius=mu)

    cosine = torch.nn.functional.cosine_similarity(estimate.flatten(), slope.flatten(), dim=0)
    assert cosine > 0.97
    assert float(estimate.norm()) == pytest.approx(float(slope.norm()), rel=0.1)


def test_antithetic_directions_are_negated_pairs():
    directions = sample_directions(torch.Generator().manual_seed(0), 6, torch.Size(SHAPE), antithetic=True)

    torch.testing.assert_close(directions[3:], -directions[:3])


def test_normalize_rows_unit_and_zero():
    gradient = torch.tensor([[3.0, 4.0], [0.0, 0.0]])

    normalized = normalize_rows(gradient)

    torch.testing.assert_close(normalized, torch.tensor([[0.6, 0.8], [0.0, 0.0]]))


def test_projection_onto_cosine_floor():
    original = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    x = torch.tensor([[0.0, 2.0], [1.0, 0.1]])

    projected = project_to_cosine_floor(x, original, floor=0.5)

    cosine = torch.nn.functional.cosine_similarity(projected, original, dim=-1)
    assert float(cosine[0]) == pytest.approx(0.5, abs=1e-6)
    assert float(projected[0].norm()) == pytest.approx(2.0, abs=1e-6)
    torch.testing.assert_close(projected[1], x[1])


class LogisticBlackBox:
    """h(f(x)) = sigmoid(k * (w . x - b)); the text carries the value of w . x."""

    def __init__(self, x0: torch.Tensor, steepness: float = 4.0) -> None:
        generator = torch.Generator().manual_seed(1)
        self.w = torch.randn(x0.shape, generator=generator)
        self.w /= self.w.norm()
        self.bias = float((self.w * x0).sum()) - 0.5  # the start scores sigmoid(2) = 0.88
        self.steepness = steepness
        self.generated = 0

    def generate(self, batch: torch.Tensor) -> list[str]:
        self.generated += batch.shape[0]
        return [f"{float((self.w * x).sum()):.8f}" for x in batch]

    def score(self, texts: list[str]) -> list[ModerationResult]:
        results = []
        for text in texts:
            value = 1.0 / (1.0 + math.exp(-self.steepness * (float(text) - self.bias)))
            results.append(ModerationResult(score=value, flagged=value >= 0.5))
        return results


def run_black_box(config: OptimizerConfig, x0: torch.Tensor | None = None):
    x0 = torch.randn(SHAPE, generator=torch.Generator().manual_seed(2)) if x0 is None else x0
    box = LogisticBlackBox(x0)
    text = box.generate(x0.unsqueeze(0))[0]
    result = box.score([text])[0]
    return box, ZerothOrderOptimizer(config).optimize(x0, text, result, box.generate, box.score)


def test_optimizer_lowers_score_and_stops_when_unflagged():
    config = OptimizerConfig(num_directions=16, smoothing_radius=0.05, step_size=0.2, cosine_floor=None, accept_early=False)

    box, result = run_black_box(config)

    assert result.resolved
    assert result.stop_reason == "resolved"
    assert result.result.score < 0.5
    assert not result.history[-1].flagged
    assert all(step.flagged for step in result.history[:-1]), "it must stop at the first unflagged step"
    assert result.iterations >= 2
    assert result.history[0].score < 0.88
    assert result.generations == box.generated - 1, "the start's generation is not the optimizer's"
    assert result.generations == result.iterations * 17


def test_optimizer_accepts_unflagged_candidate_early():
    config = OptimizerConfig(num_directions=16, smoothing_radius=1.0, step_size=0.05, cosine_floor=None)

    _, result = run_black_box(config)

    assert result.resolved
    assert result.stop_reason == "resolved_early"
    assert result.iterations == 1
    assert result.generations == 16


def test_optimizer_budget_stops_with_reason():
    config = OptimizerConfig(num_directions=8, smoothing_radius=0.01, step_size=0.01, max_generations=20)

    _, result = run_black_box(config)

    assert not result.resolved
    assert result.stop_reason == "max_generations"
    assert result.generations <= 20


def test_optimizer_max_iterations_keeps_best_response():
    config = OptimizerConfig(num_directions=4, smoothing_radius=0.01, step_size=0.01, max_iterations=2, accept_early=False)

    _, result = run_black_box(config)

    assert result.stop_reason == "max_iterations"
    assert result.iterations == 2
    assert result.best_result.score <= min(step.score for step in result.history)


def test_degenerate_response_is_never_accepted():
    x0 = torch.zeros(SHAPE)
    calls = []

    def generate(batch: torch.Tensor) -> list[str]:
        return ["   "] * batch.shape[0]

    def score(texts: list[str]) -> list[ModerationResult]:
        calls.append(list(texts))
        return [ModerationResult(score=0.0, flagged=False) for _ in texts]

    flagged = ModerationResult(score=0.9, flagged=True)
    config = OptimizerConfig(num_directions=4, max_iterations=3, cosine_floor=None)
    result = ZerothOrderOptimizer(config).optimize(x0 + 1.0, "bad words", flagged, generate, score)

    assert not result.resolved
    assert result.best_text == "bad words"
    assert calls == [], "whitespace-only texts are never sent to the scorer"


def test_cosine_floor_holds_after_every_step():
    config = OptimizerConfig(num_directions=8, smoothing_radius=0.5, step_size=3.0, cosine_floor=0.6, accept_early=False, max_iterations=3)

    _, result = run_black_box(config)

    assert all(step.cosine_similarity >= 0.6 - 1e-5 for step in result.history)


def test_same_seed_same_trajectory():
    config = OptimizerConfig(num_directions=8, smoothing_radius=0.05, step_size=0.1, accept_early=False, seed=3)

    _, first = run_black_box(config)
    _, second = run_black_box(config)

    assert [s.score for s in first.history] == [s.score for s in second.history]
    torch.testing.assert_close(first.embeddings, second.embeddings)


def test_flag_threshold_overrides_scorer_decision():
    optimizer = ZerothOrderOptimizer(OptimizerConfig(flag_threshold=0.3))

    assert optimizer.is_flagged(ModerationResult(score=0.4, flagged=False))
    assert not optimizer.is_flagged(ModerationResult(score=0.2, flagged=True))
