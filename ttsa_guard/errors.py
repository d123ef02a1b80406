"""Exceptions raised by ttsa-guard.

Every error derives from :class:`TTSAGuardError`. Leaves also derive from the
built-in class that callers already catch for that kind of failure::

    TTSAGuardError
    ├── ConfigurationError(ValueError)       invalid setting or unknown name
    ├── InvalidInputError(ValueError)        messages the guard cannot process
    │   └── PromptTooLongError               prompt exceeds the model's context
    ├── ModelLoadError(RuntimeError)         a chat model or tokenizer failed to load
    ├── ScorerError(RuntimeError)            a moderation scorer returned no usable score
    │   ├── ModerationTimeoutError(TimeoutError)
    │   └── ModerationAPIError               the moderation server answered with an error
    │       ├── ModerationAuthenticationError    401 or 403
    │       └── ModerationRateLimitError         429 after every retry
    ├── CorrectionFailedError(RuntimeError)  a flagged response stayed flagged
    │   └── BudgetExceededError              time or generation budget ran out
    └── FlaggedContentError(ValueError)      ModerationRunnable flagged a text under "raise"

    ttsa_guard.evaluation adds DatasetError and RecordFileError, both InvalidInputError.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "BudgetExceededError",
    "ConfigurationError",
    "CorrectionFailedError",
    "FlaggedContentError",
    "InvalidInputError",
    "ModelLoadError",
    "ModerationAPIError",
    "ModerationAuthenticationError",
    "ModerationRateLimitError",
    "ModerationTimeoutError",
    "PromptTooLongError",
    "ScorerError",
    "TTSAGuardError",
]


class TTSAGuardError(Exception):
    """Base class of every error raised by ttsa-guard."""


class ConfigurationError(TTSAGuardError, ValueError):
    """A setting is out of range, inconsistent with another, or names nothing known."""


class InvalidInputError(TTSAGuardError, ValueError):
    """The messages passed to the guard cannot be processed."""


class PromptTooLongError(InvalidInputError):
    """The rendered prompt plus the new tokens do not fit the model's context window.

    Attributes:
        prompt_tokens: Tokens in the rendered prompt.
        max_new_tokens: Tokens reserved for the response.
        context_length: The model's maximum number of positions.
    """

    def __init__(self, prompt_tokens: int, max_new_tokens: int, context_length: int) -> None:
        self.prompt_tokens = prompt_tokens
        self.max_new_tokens = max_new_tokens
        self.context_length = context_length
        if prompt_tokens < context_length:
            fix = f"Shorten the messages or lower max_new_tokens to at most {context_length - prompt_tokens}."
        else:
            fix = f"Shorten the messages by at least {prompt_tokens + max_new_tokens - context_length} tokens."

        msg = (
            f"The prompt has {prompt_tokens} tokens and max_new_tokens is {max_new_tokens}, "
            f"but the model's context holds {context_length} tokens. {fix}"
        )
        super().__init__(msg)


class ModelLoadError(TTSAGuardError, RuntimeError):
    """A chat model, tokenizer or classifier could not be loaded."""


class ScorerError(TTSAGuardError, RuntimeError):
    """A moderation scorer failed, so no text could be judged safe.

    Attributes:
        scorer: Name of the scorer that failed.
        audit: The audit record of the guarded call as a dict, with ``stop_reason`` set to
            ``"scorer_error"``, when the guard raised the error; empty otherwise.
    """

    def __init__(self, message: str, *, scorer: str = "unknown") -> None:
        self.scorer = scorer
        self.audit: dict[str, Any] = {}
        super().__init__(message)


class ModerationTimeoutError(ScorerError, TimeoutError):
    """The moderation server did not respond within the timeout, after every retry."""


class ModerationAPIError(ScorerError):
    """The moderation server responded with an error status or an unreadable body.

    Attributes:
        status_code: HTTP status of the last response, or None when the body was unreadable
            before a status could be read.
    """

    def __init__(self, message: str, *, scorer: str = "openai", status_code: int | None = None) -> None:
        self.status_code = status_code
        super().__init__(message, scorer=scorer)


class ModerationAuthenticationError(ModerationAPIError):
    """The moderation server rejected the API key (HTTP 401 or 403)."""


class ModerationRateLimitError(ModerationAPIError):
    """The moderation server kept responding with HTTP 429 after every retry."""


class CorrectionFailedError(TTSAGuardError, RuntimeError):
    """The optimizer could not make a flagged response score as safe.

    Attributes:
        audit: The audit record of the call as a dict: scores before and after, steps taken,
            generations and scores spent, and the stop reason.
    """

    def __init__(self, message: str, *, audit: dict[str, Any] | None = None) -> None:
        self.audit = audit or {}
        super().__init__(message)


class BudgetExceededError(CorrectionFailedError):
    """The wall-clock or generation budget of one guarded call ran out."""


class FlaggedContentError(TTSAGuardError, ValueError):
    """Moderation flagged a text under the ``raise`` policy.

    Attributes:
        source: What was flagged, such as ``"ToolMessage from tool 'search'"``.
        scorer: Name of the scorer.
        score: The text's score in [0, 1].
        categories: The scorer's per-category scores.
    """

    def __init__(self, source: str, *, scorer: str, score: float, categories: dict[str, float]) -> None:
        self.source = source
        self.scorer = scorer
        self.score = score
        self.categories = categories
        msg = (
            f"Moderation flagged the {source} (scorer {scorer!r}, score {score:.3f}) under the 'raise' "
            "policy. Pass policy='replace' to substitute a notice instead."
        )
        super().__init__(msg)
