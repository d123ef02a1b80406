"""The package's public names."""

from __future__ import annotations

import ttsa_guard


def test_all_is_sorted_case_insensitively():
    assert ttsa_guard.__all__ == sorted(ttsa_guard.__all__, key=str.lower)


def test_all_names_resolve():
    missing = [name for name in ttsa_guard.__all__ if not hasattr(ttsa_guard, name)]

    assert missing == []


def test_errors_derive_from_builtin_classes_callers_catch():
    assert issubclass(ttsa_guard.ConfigurationError, ValueError)
    assert issubclass(ttsa_guard.InvalidInputError, ValueError)
    assert issubclass(ttsa_guard.ScorerError, RuntimeError)
    assert issubclass(ttsa_guard.ModerationTimeoutError, TimeoutError)
    assert issubclass(ttsa_guard.BudgetExceededError, ttsa_guard.CorrectionFailedError)
    assert issubclass(ttsa_guard.ModerationRateLimitError, ttsa_guard.ScorerError)
