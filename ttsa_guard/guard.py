"""The guard procedure: generate, score, and correct flagged responses.

:class:`Guard` ties a backend, a scorer and the optimizer together and imports
nothing of LangChain; :class:`~ttsa_guard.chat_model.GuardedChatModel` is its
LangChain face.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ttsa_guard.audit import GuardAudit, GuardOutcome, StepAudit
from ttsa_guard.backends.base import Backend, EncodedPrompt
from ttsa_guard.config import GenerationConfig, GuardConfig, OptimizerConfig
from ttsa_guard.errors import BudgetExceededError, CorrectionFailedError, PromptTooLongError, ScorerError, TTSAGuardError
from ttsa_guard.moderation.base import ModerationResult, Scorer
from ttsa_guard.moderation.cache import CachedScorer
from ttsa_guard.optimizer import OptimizationResult, ZerothOrderOptimizer

if TYPE_CHECKING:
    import torch

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
        prefill: str = "",
        moderation_text: Callable[[str], str] | None = None,
    ) -> GuardOutcome:
        """Guard one conversation given as chat-template dicts.

        Args:
            messages: The conversation.
            tools: Tools for the chat template, in OpenAI format.
            generation: Decoding settings for this call; default: the guard's.
            prefill: Text every response starts with, such as the opening of a tool call. The
                model continues it, and the returned and scored texts include it. Needs a
                backend whose ``encode`` accepts ``prefill``.
            moderation_text: Maps a response to the text the scorers judge, such as its content
                plus its decoded tool-call arguments; None judges the response as is.
        """
        started = time.monotonic()
        generation = generation or self.generation
        if prefill:
            prompt = self.backend.encode(messages, tools=tools, prefill=prefill)  # type: ignore[call-arg]
        else:
            prompt = self.backend.encode(messages, tools=tools)
        self._check_context(prompt, generation)

        plain = self.backend.generate(prompt, None, generation)[0]
        plain_text = prefill + plain.text
        try:
            plain_result = self._score(prompt, [plain_text], view=moderation_text)[0]
        except ScorerError as exc:
            return self._scorer_failed(prompt, plain_text, exc, started, generations=1)

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
            return self._outcome(plain_text, plain_text, plain_result, plain_result, audit, prompt, len(plain.token_ids))

        search = self.search_scorer or self.scorer
        # The optimizer's own count is lost when a scorer call raises, so the audit record of a
        # scorer failure in the middle of a correction takes this one.
        generations = [1]

        def generate(batch: torch.Tensor) -> list[str]:
            texts = [prefill + g.text for g in self.backend.generate(prompt, batch, generation)]
            generations[0] += len(texts)
            return texts

        try:
            start_result = plain_result if search is self.scorer else self._score(prompt, [plain_text], search, moderation_text)[0]
            result = self.optimizer.optimize(
                prompt.editable_embeds,
                plain_text,
                start_result,
                generate=generate,
                score=lambda texts: self._score(prompt, texts, search, moderation_text),
                verify=None if search is self.scorer else lambda text: self._score(prompt, [text], view=moderation_text)[0],
                generations_spent=1,
                scores_spent=1 if search is self.scorer else 2,
                started=started,
            )
            if not result.resolved and search is not self.scorer:
                # The best response was judged by the search scorer only; the verdict comes from the scorer.
                result.best_result = self._score(prompt, [result.best_text], view=moderation_text)[0]
        except ScorerError as exc:
            return self._scorer_failed(
                prompt, plain_text, exc, started, generations=generations[0], plain_result=plain_result
            )

        return self._finish_correction(prompt, plain_text, plain_result, result, audit, started, prefill)

    def _finish_correction(
        self,
        prompt: EncodedPrompt,
        plain_text: str,
        plain_result: ModerationResult,
        result: OptimizationResult,
        audit: GuardAudit,
        started: float,
        prefill: str = "",
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

        # The prefill was part of the prompt, so its tokens count as input only.
        output_tokens = self.backend.count_tokens(text.removeprefix(prefill) if prefill else text)
        return self._outcome(text, plain_text, plain_result, final, audit, prompt, output_tokens)

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
        """Apply the scorer failure policy; an unscored response is never returned.

        Under ``raise``, the re-raised error carries the audit record as ``exc.audit``.
        """
        policy = self.config.scorer_failure_policy
        logger.warning("scorer %s failed: %s: %s", exc.scorer, type(exc).__name__, exc)
        audit = GuardAudit(
            status="refused",
            model=self.backend.name,
            scorer=self.scorer.name,
            search_scorer=self.search_scorer.name if self.search_scorer is not None else None,
            score_before=plain_result.score if plain_result else None,
            flagged_before=self.optimizer.is_flagged(plain_result) if plain_result else None,
            score_after=None,
            flagged_after=None,
            generations=generations,
            seconds=time.monotonic() - started,
            stop_reason="scorer_error",
            failure_policy=policy,
            error=type(exc).__name__,
        )
        self._log(audit)
        if policy == "raise":
            exc.audit = audit.model_dump()
            raise exc

        refusal = self.config.refusal_text
        return self._outcome(refusal, plain_text, plain_result, None, audit, prompt, self.backend.count_tokens(refusal))

    def _score(
        self,
        prompt: EncodedPrompt,
        texts: list[str],
        scorer: Scorer | None = None,
        view: Callable[[str], str] | None = None,
    ) -> list[ModerationResult]:
        """Score texts (or their ``view``) in the context of the prompt; any failure becomes a ScorerError."""
        scorer = scorer or self.scorer
        judged = [view(text) for text in texts] if view else texts
        try:
            results = scorer.score(judged, prompts=[prompt.editable_text] * len(judged))
        except TTSAGuardError:
            raise
        except Exception as exc:
            msg = f"Scorer {scorer.name!r} failed with {type(exc).__name__}: {exc}"
            raise ScorerError(msg, scorer=scorer.name) from exc

        _check_results(scorer.name, judged, results)
        return results

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


def _check_results(scorer: str, texts: list[str], results: Any) -> None:
    """Raise ScorerError unless ``results`` contains one ModerationResult per text.

    Custom scorers outside BaseScorer skip its output checks, and a verdict that is missing
    or of the wrong type must not be read as a pass.
    """
    if not isinstance(results, list):
        msg = f"Scorer {scorer!r} returned {type(results).__name__}, not a list of ModerationResult."
        raise ScorerError(msg, scorer=scorer)

    if len(results) != len(texts):
        msg = f"Scorer {scorer!r} returned {len(results)} results for {len(texts)} texts."
        raise ScorerError(msg, scorer=scorer)

    for result in results:
        if not isinstance(result, ModerationResult):
            msg = f"Scorer {scorer!r} returned {type(result).__name__}, not ModerationResult."
            raise ScorerError(msg, scorer=scorer)


def _format_score(score: float | None) -> str:
    return "none" if score is None else f"{score:.4f}"

