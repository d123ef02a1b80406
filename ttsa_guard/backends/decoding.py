"""Token-by-token decoding from input embeddings with a key-value cache.

``transformers``' ``generate`` cannot start from a precomputed prefix cache
shared by a batch of embeddings, nor drop finished rows from the batch, so the
guard decodes with its own loop. With ``temperature == 0`` it picks the argmax
token at every step, which gives the same tokens as ``generate(do_sample=False)``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from functools import cache as memoize
from typing import Any

import torch

from ttsa_guard.config import GenerationConfig

__all__ = ["decode_batch", "forward"]


def decode_batch(
    model: Any,
    inputs: torch.Tensor,
    mask: torch.Tensor,
    config: GenerationConfig,
    *,
    eos_ids: set[int],
    decode_text: Callable[[Sequence[int]], str],
    cache: Any = None,
    past_length: int = 0,
) -> list[tuple[list[int], str]]:
    """Decode a batch of prompts given as embeddings.

    Args:
        model: Causal language model taking ``inputs_embeds``.
        inputs: [B, L, d] prompt embeddings, left-padded.
        mask: [B, L] attention mask, 0 on padding.
        config: Length, sampling, stop strings and the ``drop_finished`` lever.
        eos_ids: Token ids that end a sequence.
        decode_text: Turns token ids into text, to check stop strings.
        cache: Key-value cache of ``past_length`` positions shared by every row (no padding),
            or None.
        past_length: Positions already in ``cache``.

    Returns:
        Per row, the generated token ids (without the end-of-sequence token) and the finish
        reason, ``stop`` or ``length``.
    """
    batch = inputs.shape[0]
    device = inputs.device
    generator = torch.Generator(device=device).manual_seed(config.seed) if config.temperature > 0 else None

    # Positions count only real tokens, so left padding does not shift them.
    positions = (mask.cumsum(dim=-1) - 1).clamp_min(0) + past_length  # [B, L]
    attention = None
    if not bool(mask.all()):
        # Without padding no mask is passed, so attention can take its plain causal path.
        attention = torch.cat([torch.ones(batch, past_length, dtype=mask.dtype, device=device), mask], dim=1)
    cache, logits = forward(model, cache, inputs_embeds=inputs, attention_mask=attention, position_ids=positions)
    next_position = positions[:, -1] + 1  # [B]

    tokens: list[list[int]] = [[] for _ in range(batch)]
    reasons = ["length"] * batch
    active = torch.arange(batch, device=device)  # original row of each batch entry
    finished = [False] * batch  # per batch entry
    embed = model.get_input_embeddings()

    for step in range(config.max_new_tokens):
        next_ids = _select_tokens(logits, config, generator)  # [b]
        for entry, (row, token) in enumerate(zip(active.tolist(), next_ids.tolist())):
            if finished[entry]:
                continue

            if token in eos_ids:
                finished[entry], reasons[row] = True, "stop"
                continue

            tokens[row].append(token)
            if config.stop and _ends_in_stop(decode_text(tokens[row]), config.stop):
                finished[entry], reasons[row] = True, "stop"

        if all(finished) or step == config.max_new_tokens - 1:
            break

        if config.drop_finished and any(finished):
            keep = torch.tensor([entry for entry, done in enumerate(finished) if not done], device=device)
            cache.batch_select_indices(keep)
            active, next_ids, next_position = active[keep], next_ids[keep], next_position[keep]
            attention = attention[keep] if attention is not None else None
            finished = [False] * len(keep)

        if attention is not None:
            attention = torch.cat([attention, torch.ones_like(attention[:, :1])], dim=1)
        cache, logits = forward(
            model,
            cache,
            inputs_embeds=embed(next_ids).unsqueeze(1),  # [b, 1, d]
            attention_mask=attention,
            position_ids=next_position.unsqueeze(1),
        )
        next_position = next_position + 1

    return list(zip(tokens, reasons))


def forward(model: Any, cache: Any, **inputs: Any) -> tuple[Any, torch.Tensor]:
    """Run one forward pass with a key-value cache; return the cache and the last logits [B, V]."""
    cache_keyword, keeps_logits = _forward_keywords(type(model))
    if keeps_logits:
        inputs["logits_to_keep"] = 1

    output = model(**inputs, **{cache_keyword: cache}, use_cache=True)
    new_cache = output.cache if cache_keyword == "cache" else output.past_key_values
    return new_cache, output.logits[:, -1]


@memoize
def _forward_keywords(model_class: type) -> tuple[str, bool]:
    """Name the cache keyword of ``model_class.forward`` and whether it takes ``logits_to_keep``.

    transformers renamed ``past_key_values`` to ``cache`` during the 5.x series.
    """
    parameters = inspect.signature(model_class.forward).parameters
    return ("cache" if "cache" in parameters else "past_key_values"), "logits_to_keep" in parameters


def _select_tokens(logits: torch.Tensor, config: GenerationConfig, generator: torch.Generator | None) -> torch.Tensor:
    """Pick the next token per row: argmax when greedy, else temperature and top-p sampling."""
    if config.temperature == 0:
        return logits.argmax(dim=-1)

    probabilities = torch.softmax(logits.float() / config.temperature, dim=-1)  # [b, V]
    if config.top_p < 1.0:
        sorted_probs, order = probabilities.sort(dim=-1, descending=True)
        # Keep the smallest set of tokens whose mass reaches top_p; the first token always stays.
        outside = sorted_probs.cumsum(dim=-1) - sorted_probs > config.top_p
        sorted_probs = sorted_probs.masked_fill(outside, 0.0)
        probabilities = torch.zeros_like(probabilities).scatter(-1, order, sorted_probs)

    return torch.multinomial(probabilities, 1, generator=generator).squeeze(-1)


def _ends_in_stop(text: str, stop: Sequence[str]) -> bool:
    return any(s in text for s in stop)
