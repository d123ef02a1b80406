"""Scorer backed by a chat guard model in the Llama Guard style.

A guard model is a causal language model that reads a conversation through its chat
template and generates a verdict, ``safe`` or ``unsafe``, as its first tokens. This
scorer runs one forward pass per batch and reads the verdict from the logits of the
first generated token, without sampling. transformers and torch are imported on first
use.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ttsa_guard.errors import ConfigurationError, ScorerError
from ttsa_guard.moderation.base import ModerationResult, validate_threshold
from ttsa_guard.moderation.local import LocalModelScorer

__all__ = ["GuardModelScorer"]



@dataclass(frozen=True)
class _Loaded:
    model: Any
    tokenizer: Any
    chat_template: str
    safe_id: int
    unsafe_id: int
    max_length: int | None
    forward_options: dict[str, Any]
    pass_position_ids: bool


class GuardModelScorer(LocalModelScorer["_Loaded"]):
    """Scores responses with a guard model's probability of generating "unsafe".

    The chat template renders [user prompt, assistant response], or the text alone as a
    user message when its prompt is None, and ends with the generation prompt. The score
    is P(unsafe) from a softmax over the two verdict logits only, at the first generated
    position::

        score = exp(l_unsafe) / (exp(l_safe) + exp(l_unsafe))

    Restricting the softmax to the two verdicts keeps the score independent of the mass
    that the model puts on other tokens, such as whitespace before the verdict. Each
    verdict string is tokenized without special tokens, and its first token id is used.
    Pass the strings as the model generates them, such as ``" safe"`` when the verdict
    token of the guard's tokenizer carries a leading space.

    Conversations are left-padded into batches with an attention mask. For models whose
    ``forward`` takes ``position_ids``, the positions follow the mask, so padding does not
    shift them. A rendered conversation
    longer than ``max_length`` raises :class:`ScorerError`, because cutting either end
    would remove the instructions or the response.

    Args:
        model: A model id or local folder, loaded on first use, or a built causal LM.
        tokenizer: The tokenizer of a built model (required then).
        safe_token: Verdict string for harmless content. Default ``"safe"``.
        unsafe_token: Verdict string for harmful content. Default ``"unsafe"``.
        threshold: P(unsafe) at or above which a text is flagged, in (0, 1]. Default 0.5.
        batch_size: Conversations per forward pass, >= 1. Default 8.
        max_length: Maximum tokens of a rendered conversation. Default: the smaller of the
            tokenizer's ``model_max_length`` and the model's ``max_position_embeddings``.
        chat_template: Jinja template that replaces the tokenizer's own.
        chat_template_kwargs: Extra variables for the template, such as ``categories``.
        device: Device for a model loaded from an id, unless ``model_kwargs`` has a ``device_map``.
            Default: ``cuda`` when available, else ``cpu``. A built model is moved only when given.
        model_kwargs: Extra keyword arguments for ``from_pretrained``, such as ``dtype``.
        name: Name shown in audit records. Default ``guard:<id>``.

    Raises:
        ConfigurationError: An option is invalid, the tokenizer has no chat template, or the
            verdict strings share their first token.
        ModelLoadError: The model or tokenizer cannot be loaded.
    """

    kind = "guard"
    auto_class = "AutoModelForCausalLM"
    description = "guard model"

    def __init__(
        self,
        model: str | os.PathLike[str] | Any,
        *,
        tokenizer: Any = None,
        safe_token: str = "safe",
        unsafe_token: str = "unsafe",
        threshold: float = 0.5,
        batch_size: int = 8,
        max_length: int | None = None,
        chat_template: str | None = None,
        chat_template_kwargs: Mapping[str, Any] | None = None,
        device: str | None = None,
        model_kwargs: Mapping[str, Any] | None = None,
        name: str | None = None,
    ) -> None:
        if not safe_token or not unsafe_token or safe_token == unsafe_token:
            msg = f"safe_token and unsafe_token must be two different non-empty strings, got {safe_token!r} and {unsafe_token!r}."
            raise ConfigurationError(msg)

        super().__init__(
            model,
            tokenizer=tokenizer,
            batch_size=batch_size,
            max_length=max_length,
            device=device,
            model_kwargs=model_kwargs,
            name=name,
        )
        self.safe_token = safe_token
        self.unsafe_token = unsafe_token
        self.threshold = validate_threshold(threshold)
        self.chat_template = chat_template
        self.chat_template_kwargs = dict(chat_template_kwargs or {})
        self._load_if_built()

    def _prepare(self, model: Any, tokenizer: Any) -> _Loaded:
        template = self.chat_template or getattr(tokenizer, "chat_template", None)
        if not template:
            msg = f"The tokenizer of {self.name} has no chat template. Pass chat_template= with the guard's template."
            raise ConfigurationError(msg)

        safe_id = self._first_token_id(tokenizer, self.safe_token)
        unsafe_id = self._first_token_id(tokenizer, self.unsafe_token)
        if safe_id == unsafe_id:
            msg = (
                f"safe_token {self.safe_token!r} and unsafe_token {self.unsafe_token!r} start with the "
                f"same token (id {safe_id}), so their logits cannot be told apart. Pass strings whose "
                "first tokens differ."
            )
            raise ConfigurationError(msg)

        # Dropout must be off, or the same text gets different scores.
        model.eval()
        parameters = inspect.signature(model.forward).parameters
        # Only the last position's logits are read, and no cache is reused.
        options: dict[str, Any] = {}
        if "use_cache" in parameters:
            options["use_cache"] = False
        if "logits_to_keep" in parameters:
            options["logits_to_keep"] = 1

        return _Loaded(
            model=model,
            tokenizer=tokenizer,
            chat_template=template,
            safe_id=safe_id,
            unsafe_id=unsafe_id,
            max_length=self._limit(tokenizer, model.config),
            forward_options=options,
            pass_position_ids="position_ids" in parameters,
        )

    @staticmethod
    def _first_token_id(tokenizer: Any, verdict: str) -> int:
        ids = tokenizer.encode(verdict, add_special_tokens=False)
        if not ids:
            msg = f"The verdict string {verdict!r} encodes to no tokens."
            raise ConfigurationError(msg)

        return int(ids[0])

    def _render(self, loaded: _Loaded, text: str, prompt: str | None) -> str:
        if prompt is None:
            conversation = [{"role": "user", "content": text}]
        else:
            conversation = [{"role": "user", "content": prompt}, {"role": "assistant", "content": text}]

        from jinja2 import TemplateError

        try:
            rendered = loaded.tokenizer.apply_chat_template(
                conversation,
                chat_template=loaded.chat_template,
                tokenize=False,
                add_generation_prompt=True,
                **self.chat_template_kwargs,
            )
        except TemplateError as exc:
            msg = f"The chat template of {self.name} failed to render the conversation: {exc}"
            raise ScorerError(msg, scorer=self.name) from exc

        return str(rendered)

    def _score(self, texts: list[str], prompts: list[str | None]) -> list[ModerationResult]:
        import torch

        loaded = self._ensure_loaded()
        device = next(loaded.model.parameters()).device
        results = []
        with torch.no_grad():
            for start in range(0, len(texts), self.batch_size):
                pairs = zip(texts[start : start + self.batch_size], prompts[start : start + self.batch_size], strict=True)
                rendered = [self._render(loaded, text, prompt) for text, prompt in pairs]
                # The template writes its own special tokens, such as the BOS token.
                token_ids = loaded.tokenizer(rendered, add_special_tokens=False)["input_ids"]
                input_ids, attention_mask = self._left_pad(token_ids, loaded)
                inputs = {"input_ids": input_ids.to(device), "attention_mask": attention_mask.to(device)}
                if loaded.pass_position_ids:
                    inputs["position_ids"] = (inputs["attention_mask"].cumsum(-1) - 1).clamp(min=0)

                logits = loaded.model(**inputs, **loaded.forward_options).logits[:, -1, :].float()  # [B, V]
                verdicts = logits[:, [loaded.safe_id, loaded.unsafe_id]]  # [B, 2]
                unsafe = torch.softmax(verdicts, dim=-1)[:, 1].cpu().tolist()  # [B]
                results.extend(self._to_result(probability) for probability in unsafe)

        return results

    def _left_pad(self, token_ids: list[list[int]], loaded: _Loaded) -> tuple[Any, Any]:
        """Return ``input_ids`` and ``attention_mask`` tensors, [B, L], padded on the left."""
        import torch

        if any(not ids for ids in token_ids):
            msg = f"The chat template of {self.name} rendered a conversation that encodes to no tokens."
            raise ScorerError(msg, scorer=self.name)

        longest = max(len(ids) for ids in token_ids)
        if loaded.max_length is not None and longest > loaded.max_length:
            msg = (
                f"A conversation for {self.name} has {longest} tokens, more than max_length="
                f"{loaded.max_length}. Score shorter texts or raise max_length if the model allows it."
            )
            raise ScorerError(msg, scorer=self.name)

        # Padded positions are masked out, so any valid id works as padding.
        pad_id = loaded.tokenizer.pad_token_id
        pad_id = 0 if pad_id is None else int(pad_id)
        input_ids = torch.full((len(token_ids), longest), pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(token_ids), longest), dtype=torch.long)
        for row, ids in enumerate(token_ids):
            input_ids[row, longest - len(ids) :] = torch.tensor(ids, dtype=torch.long)
            attention_mask[row, longest - len(ids) :] = 1

        return input_ids, attention_mask

    def _to_result(self, probability: float) -> ModerationResult:
        score = min(max(probability, 0.0), 1.0)
        return ModerationResult(score=score, flagged=score >= self.threshold, categories={self.unsafe_token: score})

    def __repr__(self) -> str:
        return f"GuardModelScorer(name={self.name!r}, threshold={self.threshold}, batch_size={self.batch_size})"
