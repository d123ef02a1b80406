"""The guard procedure: generate, score, and correct flagged responses.

:class:`Guard` ties a backend, a scorer and the optimizer together and knows
nothing of LangChain; :class:`~ttsa_guard.chat_model.GuardedChatModel` is its
LangChain face.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

from ttsa_guard.audit import GuardAudit, GuardOutcome, StepAudit
from ttsa_guard.backends.base import Backend, EncodedPrompt
from ttsa_guard.config import GenerationConfig, GuardConfig, OptimizerConfig
from ttsa_guard.errors import BudgetExceededError, CorrectionFailedError, PromptTooLongError, ScorerError, TTSAGuardError
from ttsa_guard.moderation.base import ModerationResult, Scorer
from ttsa_guard.moderation.cache import CachedScorer
from ttsa_guard.optimizer import OptimizationResult, ZerothOrderOptimizer

__all__ = ["Guard"]

logger = logging.getLogger(__name__)


class Guard:
    """Generates a response and, when the scorer flags it, steers the prompt embeddings.

    Args:
        backend: Produces text from prompt embeddings.
        scorer: Judges texts; its failures never let an unscored text through. It gives the
            verdict on the plain response and on every response the guard returns.
        search_scorer: Optional cheaper scorer that drives the optimizer's search (a scorer
            cascade). A response it no longer flags is accepted only when ``scorer`` agrees,
            so a correction costs a few calls to ``scorer`` instead of one per generation.
        generation: Decoding settings.
        optimizer: Zeroth-order optimizer settings.
        config: Failure policies and the refusal text.
    """

    def __init__(
        self,
        backend: Backend,
        scorer: Scorer,
        *,
        search_scorer: Scorer | None = None,
        generation: GenerationConfig | None = None,
        optimizer: OptimizerConfig | None = None,
        config: GuardConfig | None = None,
    ) -> None:
        self.backend = backend
        self.config = config or GuardConfig()
        self.scorer = self._with_cache(scorer)
        self.search_scorer = self._with_cache(search_scorer) if search_scorer is not None else None
        self.generation = generation or GenerationConfig()
        self.optimizer = ZerothOrderOptimizer(optimizer)

    def _with_cache(self, scorer: Scorer) -> Scorer:
        size = self.config.score_cache_size
        return scorer if size is None else CachedScorer(scorer, max_size=size)

    def run(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        tools: Sequence[Mapping[str, Any]] | None = None,
        generation: GenerationConfig | None = None,
    ) -> GuardOutcome:
        """Guard one conversation given as chat-template dicts."""
        started = time.monotonic()
        generation = generation or self.generation
        prompt = self.backend.encode(messages, tools=tools)
        self._check_context(prompt, generation)

        plain = self.backend.generate(prompt, None, generation)[0]
        try:
            plain_result = self._score(prompt, [plain.text])[0]
        except ScorerError as exc:
            return self._scorer_failed(prompt, plain.text, exc, started, generations=1)

        audit = GuardAudit(
            status="passed",
            model=self.backend.name,
            scorer=self.scorer.name,
            search_scorer=self.search_scorer.name if self.search_scorer is not None else None,
            score_before=plain_result.score,
            flagged_before=self.optimizer.is_flagged(plain_result),
            score_after=plain_result.score,
            flagged_after=self.optimizer.is_flagged(plain_result),
            categories_after=plain_result.categories,
            generations=1,
            scores=1,
        )
        if not audit.flagged_before:
            audit.seconds = time.monotonic() - started
            self._log(audit)
            return self._outcome(plain.text, plain.text, plain_result, plain_result, audit, prompt, len(plain.token_ids))

        search = self.search_scorer or self.scorer
        try:
            start_result = plain_result if search is self.scorer else self._score(prompt, [plain.text], search)[0]
            result = self.optimizer.optimize(
                prompt.editable_embeds,
                plain.text,
                start_result,
                generate=lambda batch: [g.text for g in self.backend.generate(prompt, batch, generation)],
                score=lambda texts: self._score(prompt, texts, search),
                verify=None if search is self.scorer else lambda text: self._score(prompt, [text])[0],
                generations_spent=1,
                scores_spent=1 if search is self.scorer else 2,
                started=started,
            )
            if not result.resolved and search is not self.scorer:
                # The best response was judged by the search scorer only; the verdict comes from the scorer.
                result.best_result = self._score(prompt, [result.best_text])[0]
        except ScorerError as exc:
            return self._scorer_failed(prompt, plain.text, exc, started, generations=1, plain_result=plain_result)

        return self._finish_correction(prompt, plain.text, plain_result, result, audit, started)

    def _finish_correction(
        self,
        prompt: EncodedPrompt,
        plain_text: str,
        plain_result: ModerationResult,
        result: OptimizationResult,
        audit: GuardAudit,
        started: float,
    ) -> GuardOutcome:
        audit.iterations = result.iterations
        audit.generations = result.generations
        audit.scores = result.scores
        audit.verifications = result.verifications
        audit.cosine_similarity = result.cosine_similarity
        audit.steered_prompt = self.backend.nearest_tokens(result.embeddings)
        audit.stop_reason = result.stop_reason
        audit.history = [StepAudit(**record.__dict__) for record in result.history]

        if result.resolved:
            text, final = result.text, result.result
            audit.status = "corrected"
        else:
            text, final = self._apply_failure_policy(audit, result)

        audit.score_after = final.score if final is not None else None
        audit.flagged_after = self.optimizer.is_flagged(final) if final is not None else None
        audit.categories_after = final.categories if final is not None else {}
        audit.seconds = time.monotonic() - started
        self._log(audit)

        if audit.failure_policy == "raise":
            error = BudgetExceededError if result.stop_reason in ("max_generations", "max_seconds") else CorrectionFailedError
            msg = (
                f"The response stayed flagged after {result.iterations} iterations and {result.generations} "
                f"generations (stop reason: {result.stop_reason}; best score {result.best_result.score:.3f})."
            )
            raise error(msg, audit=audit.model_dump())

        return self._outcome(text, plain_text, plain_result, final, audit, prompt, self.backend.count_tokens(text))

    def _apply_failure_policy(
        self, audit: GuardAudit, result: OptimizationResult
    ) -> tuple[str, ModerationResult | None]:
        policy = self.config.failure_policy
        audit.failure_policy = policy
        audit.status = "unresolved" if policy == "best_effort" else "refused"
        if policy == "best_effort":
            return result.best_text, result.best_result

        return self.config.refusal_text, None

    def _scorer_failed(
        self,
        prompt: EncodedPrompt,
        plain_text: str,
        exc: ScorerError,
        started: float,
        *,
        generations: int,
        plain_result: ModerationResult | None = None,
    ) -> GuardOutcome:
        """Apply the scorer failure policy; an unscored response is never returned."""
        logger.warning("scorer %s failed: %s: %s", self.scorer.name, type(exc).__name__, exc)
        if self.config.scorer_failure_policy == "raise":
            raise exc

        audit = GuardAudit(
            status="refused",
            model=self.backend.name,
            scorer=self.scorer.name,
            score_before=plain_result.score if plain_result else None,
            flagged_before=self.optimizer.is_flagged(plain_result) if plain_result else None,
            score_after=None,
            flagged_after=None,
            generations=generations,
            seconds=time.monotonic() - started,
            stop_reason="scorer_error",
            failure_policy="refuse",
            error=type(exc).__name__,
        )
        self._log(audit)
        refusal = self.config.refusal_text
        return self._outcome(refusal, plain_text, plain_result, None, audit, prompt, self.backend.count_tokens(refusal))

    def _score(self, prompt: EncodedPrompt, texts: list[str], scorer: Scorer | None = None) -> list[ModerationResult]:
        """Score texts in the context of the prompt; any failure becomes a ScorerError."""
        scorer = scorer or self.scorer
        try:
            return scorer.score(texts, prompts=[prompt.editable_text] * len(texts))
        except TTSAGuardError:
            raise
        except Exception as exc:
            msg = f"Scorer {scorer.name!r} failed with {type(exc).__name__}: {exc}"
            raise ScorerError(msg, scorer=scorer.name) from exc

    def _check_context(self, prompt: EncodedPrompt, generation: GenerationConfig) -> None:
        context = getattr(self.backend, "context_length", None)
        if context is not None and prompt.num_tokens + generation.max_new_tokens > context:
            raise PromptTooLongError(prompt.num_tokens, generation.max_new_tokens, context)

    def _outcome(
        self,
        text: str,
        plain_text: str,
        plain_result: ModerationResult | None,
        final_result: ModerationResult | None,
        audit: GuardAudit,
        prompt: EncodedPrompt,
        output_tokens: int,
    ) -> GuardOutcome:
        return GuardOutcome(
            text=text,
            plain_text=plain_text,
            plain_result=plain_result,
            final_result=final_result,
            audit=audit,
            input_tokens=prompt.num_tokens,
            output_tokens=output_tokens,
        )

    def _log(self, audit: GuardAudit) -> None:
        logger.info(
            "guarded call: status=%s iterations=%d generations=%d score_before=%s score_after=%s seconds=%.2f",
            audit.status,
            audit.iterations,
            audit.generations,
            _format_score(audit.score_before),
            _format_score(audit.score_after),
            audit.seconds,
        )


def _format_score(score: float | None) -> str:
    return "none" if score is None else f"{score:.4f}"

