"""The transformers backend: chat templates, span splitting and batched decoding."""

from __future__ import annotations

import copy
import logging
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from ttsa_guard.backends.base import EncodedPrompt, Generation
from ttsa_guard.backends.decoding import decode_batch, forward
from ttsa_guard.backends.loading import load_model_and_tokenizer
from ttsa_guard.config import GenerationConfig
from ttsa_guard.errors import InvalidInputError, ModelLoadError

__all__ = ["TransformersBackend"]

logger = logging.getLogger(__name__)

# Stands in for the editable content while rendering the chat template, so the
# rendered text can be cut into the fixed prefix and suffix around it.
_SENTINEL = "\u2063TTSA-EDITABLE\u2063"


class TransformersBackend:
    """Generates from prompt embeddings with a transformers causal language model.

    Args:
        model: A loaded ``PreTrainedModel`` for causal language modeling.
        tokenizer: Its fast tokenizer, with a chat template.
        name: Identifier shown in audit records.
    """

    def __init__(self, model: Any, tokenizer: Any, *, name: str = "custom") -> None:
        if getattr(tokenizer, "chat_template", None) is None:
            msg = f"The tokenizer of {name!r} has no chat template; the guard needs a chat model."
            raise ModelLoadError(msg)

        if not getattr(tokenizer, "is_fast", False):
            msg = f"The tokenizer of {name!r} is not a fast tokenizer; the guard needs token offsets."
            raise ModelLoadError(msg)

        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        self._lock = threading.RLock()
        self._eos_ids = _eos_token_ids(model, tokenizer)

    @classmethod
    def from_pretrained(cls, spec: str = "embedded", *, device: str = "cpu", dtype: str = "float32") -> TransformersBackend:
        """Load ``spec`` (``"embedded"``, a ``.gguf`` path, a folder or a Hugging Face id)."""
        model, tokenizer = load_model_and_tokenizer(spec, device=device, dtype=dtype)
        return cls(model, tokenizer, name=spec)

    @property
    def device(self) -> torch.device:
        """Device of the model's input embeddings."""
        return self.model.get_input_embeddings().weight.device

    @property
    def context_length(self) -> int | None:
        """Maximum positions the model accepts, or None when its config does not set it."""
        return getattr(self.model.config, "max_position_embeddings", None)

    def render(self, messages: Sequence[Mapping[str, Any]], *, tools: Sequence[Mapping[str, Any]] | None = None) -> str:
        """Render messages with the chat template and the generation prompt."""
        return self.tokenizer.apply_chat_template(
            list(messages), tools=list(tools) if tools else None, tokenize=False, add_generation_prompt=True
        )

    def encode(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        tools: Sequence[Mapping[str, Any]] | None = None,
        prefill: str = "",
    ) -> EncodedPrompt:
        """Render ``messages`` and split them around the last user message's content.

        ``prefill`` is appended after the generation prompt, in the fixed suffix, so every
        response continues it (such as the opening of a forced tool call).
        """
        index = _last_user_index(messages)
        content = messages[index]["content"]
        if not isinstance(content, str) or not content.strip():
            msg = f"The last user message must have non-empty text content, got {content!r}."
            raise InvalidInputError(msg)

        with_sentinel = [dict(m) for m in messages]
        with_sentinel[index]["content"] = _SENTINEL
        templated = self.render(with_sentinel, tools=tools) + prefill
        if templated.count(_SENTINEL) != 1:
            msg = f"The chat template of {self.name!r} does not render message content verbatim."
            raise ModelLoadError(msg)

        prefix_text, suffix_text = templated.split(_SENTINEL)
        text = self.render(messages, tools=tools) + prefill
        if text != prefix_text + content + suffix_text:
            # Some templates trim message content; the trimmed text is what the model reads.
            content = content.strip()
            if text != prefix_text + content + suffix_text:
                msg = f"The chat template of {self.name!r} rewrites message content, so it cannot be edited."
                raise ModelLoadError(msg)

        prefix_ids, editable_ids, suffix_ids = self._split_ids(text, len(prefix_text), len(prefix_text) + len(content))
        embed = self.model.get_input_embeddings()
        with torch.no_grad():
            prefix_embeds, editable_embeds, suffix_embeds = (
                embed(ids.to(self.device)).float() for ids in (prefix_ids, editable_ids, suffix_ids)
            )

        return EncodedPrompt(
            prefix_ids=prefix_ids,
            editable_ids=editable_ids,
            suffix_ids=suffix_ids,
            prefix_embeds=prefix_embeds,
            editable_embeds=editable_embeds,
            suffix_embeds=suffix_embeds,
            text=text,
            editable_text=content,
        )

    def _split_ids(self, text: str, start: int, end: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Tokenize ``text`` once and cut the ids at character offsets ``start`` and ``end``.

        Tokenizing the whole text keeps the ids identical to what the plain model reads. When a
        token straddles a boundary, the three spans are tokenized separately instead.
        """
        encoding = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids, offsets = encoding["input_ids"], encoding["offset_mapping"]
        spans: tuple[list[int], list[int], list[int]] = ([], [], [])
        for token_id, (token_start, token_end) in zip(ids, offsets):
            if token_end <= start:
                spans[0].append(token_id)
            elif token_start >= start and token_end <= end:
                spans[1].append(token_id)
            elif token_start >= end:
                spans[2].append(token_id)
            else:
                logger.debug("a token straddles the editable span; tokenizing the spans separately")
                spans = tuple(
                    self.tokenizer(part, add_special_tokens=False)["input_ids"]
                    for part in (text[:start], text[start:end], text[end:])
                )  # type: ignore[assignment]
                break

        return tuple(torch.tensor(span, dtype=torch.long) for span in spans)  # type: ignore[return-value]

    def generate(
        self, prompt: EncodedPrompt, editable: torch.Tensor | None, config: GenerationConfig
    ) -> list[Generation]:
        """Generate one response per row of ``editable`` [B, T, d]; None means the original span.

        The original prompt runs in one forward pass, like the plain model; the prefix cache
        serves the perturbed batches that follow.
        """
        use_prefix_cache = config.reuse_prefix_cache and editable is not None and len(prompt.prefix_ids) > 0
        if editable is None:
            editable = prompt.editable_embeds.unsqueeze(0)

        batch = editable.shape[0]
        editable = editable.to(self.device, self.model.dtype)
        suffix = prompt.suffix_embeds.to(self.model.dtype).expand(batch, -1, -1)
        with self._lock, torch.no_grad():
            if use_prefix_cache:
                cache = self._prefix_cache(prompt, batch)
                inputs = torch.cat([editable, suffix], dim=1)  # [B, T + S, d]
                past_length = len(prompt.prefix_ids)
            else:
                prefix = prompt.prefix_embeds.to(self.model.dtype).expand(batch, -1, -1)
                inputs = torch.cat([prefix, editable, suffix], dim=1)  # [B, P + T + S, d]
                cache, past_length = None, 0

            mask = torch.ones(inputs.shape[:2], dtype=torch.long, device=self.device)
            return self._decode(inputs, mask, config, cache=cache, past_length=past_length)

    def generate_padded(self, embeds: Sequence[torch.Tensor], config: GenerationConfig) -> list[Generation]:
        """Generate from prompts of different lengths, each [L_i, d], left-padded into one batch."""
        if not embeds:
            return []

        longest = max(e.shape[0] for e in embeds)
        hidden = embeds[0].shape[-1]
        inputs = torch.zeros(len(embeds), longest, hidden, dtype=self.model.dtype, device=self.device)
        mask = torch.zeros(len(embeds), longest, dtype=torch.long, device=self.device)
        for row, e in enumerate(embeds):
            inputs[row, longest - e.shape[0] :] = e.to(self.device, self.model.dtype)
            mask[row, longest - e.shape[0] :] = 1

        with self._lock, torch.no_grad():
            return self._decode(inputs, mask, config)

    def _decode(
        self,
        inputs: torch.Tensor,
        mask: torch.Tensor,
        config: GenerationConfig,
        *,
        cache: Any = None,
        past_length: int = 0,
    ) -> list[Generation]:
        sequences = decode_batch(
            self.model,
            inputs,
            mask,
            config,
            eos_ids=self._eos_ids,
            decode_text=self._decode_text,
            cache=cache,
            past_length=past_length,
        )
        return [
            Generation(text=self._finish_text(ids, config.stop), token_ids=tuple(ids), finish_reason=reason)
            for ids, reason in sequences
        ]

    def _prefix_cache(self, prompt: EncodedPrompt, batch: int) -> Any:
        """Return a copy of the prompt's prefix key-value cache, repeated ``batch`` times."""
        cached = prompt.cache.get("prefix_kv")
        if cached is None:
            prefix = prompt.prefix_embeds.to(self.model.dtype).unsqueeze(0)  # [1, P, d]
            cached, _ = forward(self.model, None, inputs_embeds=prefix)
            prompt.cache["prefix_kv"] = cached

        cache = copy.deepcopy(cached)
        if batch > 1:
            cache.batch_repeat_interleave(batch)

        return cache

    def _decode_text(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    def _finish_text(self, ids: Sequence[int], stop: Sequence[str]) -> str:
        text = self._decode_text(ids)
        cuts = [text.find(s) for s in stop if s in text]
        return text[: min(cuts)] if cuts else text

    def count_tokens(self, text: str) -> int:
        """Return the number of tokens in ``text`` without special tokens."""
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def nearest_tokens(self, editable: torch.Tensor) -> str:
        """Decode each row of [T, d] embeddings as its nearest vocabulary token by cosine similarity."""
        weight = self.model.get_input_embeddings().weight.detach().float()  # [V, d]
        rows = editable.detach().to(weight.device, torch.float32)  # [T, d]
        similarity = torch.nn.functional.normalize(rows, dim=-1) @ torch.nn.functional.normalize(weight, dim=-1).T
        return self.tokenizer.decode(similarity.argmax(dim=-1).tolist(), skip_special_tokens=False)

    def __repr__(self) -> str:
        return f"TransformersBackend(name={self.name!r})"


def _last_user_index(messages: Sequence[Mapping[str, Any]]) -> int:
    for index in range(len(messages) - 1, -1, -1):
        if messages[index].get("role") == "user":
            return index

    roles = [m.get("role") for m in messages]
    msg = f"The messages contain no user message to steer (roles: {roles}); add a HumanMessage."
    raise InvalidInputError(msg)


def _eos_token_ids(model: Any, tokenizer: Any) -> set[int]:
    ids: set[int] = set()
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if isinstance(configured, int):
        ids.add(configured)
    elif configured:
        ids.update(configured)

    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)

    return ids
