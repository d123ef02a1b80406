"""Benchmark arithmetic and the reference mode's settings."""

from __future__ import annotations

import pytest

from ttsa_guard.benchmark import _summarize_mode, default_settings, reference_settings


def run(neutralized: bool, seconds: float, generations: int, flagged_before: bool = True) -> dict:
    return {
        "flagged_before": flagged_before,
        "neutralized": neutralized,
        "seconds": seconds,
        "generations": generations,
    }


def test_summary_charges_failed_prompts_to_neutralized_ones():
    runs = [run(True, 10.0, 17), run(False, 50.0, 171), run(True, 20.0, 34), run(False, 1.0, 1, flagged_before=False)]

    summary = _summarize_mode(runs)

    assert summary["flagged"] == 3
    assert summary["neutralized"] == 2
    assert summary["neutralization_rate"] == pytest.approx(2 / 3)
    assert summary["seconds_per_neutralized"] == pytest.approx(80.0 / 2)
    assert summary["generations_per_neutralized"] == pytest.approx(222 / 2)
    assert summary["median_seconds"] == 20.0


def test_summary_without_neutralized_prompts():
    summary = _summarize_mode([run(False, 5.0, 10)])

    assert summary["neutralization_rate"] == 0.0
    assert summary["seconds_per_neutralized"] is None


def test_reference_mode_turns_every_lever_off():
    generation, optimizer, guard = reference_settings(32)

    assert generation.max_new_tokens == 32
    assert generation.reuse_prefix_cache is False
    assert generation.drop_finished is False
    assert optimizer.generation_batch_size == 1
    assert optimizer.accept_early is False
    assert guard.score_cache_size is None


def test_default_mode_differs_from_reference_only_in_levers():
    default = [c.model_dump() for c in default_settings(32)]
    reference = [c.model_dump() for c in reference_settings(32)]

    changed = {key for d, r in zip(default, reference) for key in d if d[key] != r[key]}

    assert changed == {"reuse_prefix_cache", "drop_finished", "generation_batch_size", "accept_early", "score_cache_size"}
