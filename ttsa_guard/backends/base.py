"""The backend protocol: how text is produced from prompt embeddings.

A backend renders chat messages into three spans of input embeddings. The fixed
prefix holds the chat template tokens, system prompt and earlier turns. The
editable part is by default the content of the last user message. The fixed
suffix is the end of that message and the generation prompt. The optimizer
perturbs only the editable span, and the backend generates a response for each
perturbed copy.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch

from ttsa_guard.config import GenerationConfig

__all__ = ["Backend", "EncodedPrompt", "Generation"]


@dataclass(eq=False)
class EncodedPrompt:
    """A rendered prompt split into fixed prefix, editable part and fixed suffix.

    Token ids are 1-D LongTensors; embeddings are float tensors [length, hidden_size] on the
    model's device.
    """

    prefix_ids: torch.Tensor
    editable_ids: torch.Tensor
    suffix_ids: torch.Tensor
    prefix_embeds: torch.Tensor
    editable_embeds: torch.Tensor
    suffix_embeds: torch.Tensor
    text: str
    """The whole rendered prompt."""
    editable_text: str
    """The text of the editable span."""
    cache: dict[str, Any] = field(default_factory=dict, repr=False)
    """Per-prompt state a backend may keep, such as the prefix key-value cache."""

    @property
    def num_tokens(self) -> int:
        """Tokens in the whole prompt."""
        return len(self.prefix_ids) + len(self.editable_ids) + len(self.suffix_ids)

    def input_embeds(self, editable: torch.Tensor | None = None) -> torch.Tensor:
        """Join prefix, ``editable`` (default: the original) and suffix into [length, hidden]."""
        middle = self.editable_embeds if editable is None else editable
        return torch.cat([self.prefix_embeds, middle.to(self.prefix_embeds), self.suffix_embeds])


@dataclass(frozen=True)
class Generation:
    """One generated response."""

    text: str
    token_ids: tuple[int, ...]
    finish_reason: str
    """``stop`` (end-of-sequence token or stop string) or ``length`` (max_new_tokens reached)."""


@runtime_checkable
class Backend(Protocol):
    """Interface the guard needs from a chat model backend."""

    name: str
    """Model identifier shown in audit records."""

    def encode(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        tools: Sequence[Mapping[str, Any]] | None = None,
        prefill: str = "",
    ) -> EncodedPrompt:
        """Render chat messages (role/content dicts) and split them into the three spans.

        ``prefill`` goes after the generation prompt, in the fixed suffix, so every response
        continues it (the opening of a forced tool call).
        """
        ...

    def generate(
        self, prompt: EncodedPrompt, editable: torch.Tensor | None, config: GenerationConfig
    ) -> list[Generation]:
        """Generate one response per row of ``editable`` [B, T, d]; None means the original."""
        ...

    def count_tokens(self, text: str) -> int:
        """Return the number of tokens in ``text``, special tokens excluded."""
        ...

    def nearest_tokens(self, editable: torch.Tensor) -> str:
        """Decode each row of [T, d] embeddings as its nearest vocabulary token (cosine)."""
        ...
