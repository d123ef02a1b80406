"""Test doubles for the LangChain tests: a scripted backend, a recording handler, a tools template."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any
from uuid import UUID

import torch
from langchain_core.callbacks import BaseCallbackHandler

from ttsa_guard.backends.base import EncodedPrompt, Generation
from ttsa_guard.backends.transformers import TransformersBackend
from ttsa_guard.config import GenerationConfig

Script = Callable[[str, bool], str]
"""Maps (rendered prompt, whether the editable embeddings were steered) to a full response."""

# A tools-capable template in the style of ChatML models: tools in the system turn, tool calls
# as <tool_call> blocks in assistant turns, tool results as <tool_response> blocks.
TOOLS_TEMPLATE = (
    "{% if tools %}<|im_start|>system\n"
    "{% if messages[0]['role'] == 'system' %}{{ messages[0]['content'] }}\n\n{% endif %}"
    "Tools:\n{% for tool in tools %}{{ tool | tojson }}\n{% endfor %}<|im_end|>\n"
    "{% elif messages[0]['role'] == 'system' %}"
    "<|im_start|>system\n{{ messages[0]['content'] }}<|im_end|>\n"
    "{% endif %}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}"
    "{% elif message['role'] == 'tool' %}"
    "<|im_start|>user\n<tool_response>\n{{ message['content'] }}\n</tool_response><|im_end|>\n"
    "{% elif message['role'] == 'assistant' and message.get('tool_calls') %}<|im_start|>assistant\n{{ message['content'] }}"
    "{% for call in message['tool_calls'] %}<tool_call>\n"
    '{"name": "{{ call["function"]["name"] }}", "arguments": {{ call["function"]["arguments"] | tojson }}}'
    "\n</tool_call>{% endfor %}<|im_end|>\n"
    "{% else %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


class ScriptedBackend:
    """Renders and encodes with a real backend, and returns scripted responses instead of decoding.

    A response counts as steered when its editable embeddings differ from the original, so a
    script can give a flagged response for the original prompt and a clean one once the
    optimizer has moved it. A forced tool call's prefill is removed from the scripted response,
    as a real model continues it; the script must start with the prefill.
    """

    def __init__(self, inner: TransformersBackend, script: Script, *, name: str = "scripted") -> None:
        self.inner = inner
        self.script = script
        self.name = name
        self.prompts: list[str] = []

    @property
    def context_length(self) -> int | None:
        """None: the script does not decode, so the tiny model's 512 positions do not apply."""
        return None

    def render(self, messages: Sequence[Mapping[str, Any]], *, tools: Sequence[Mapping[str, Any]] | None = None) -> str:
        return self.inner.render(messages, tools=tools)

    def encode(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        tools: Sequence[Mapping[str, Any]] | None = None,
        prefill: str = "",
    ) -> EncodedPrompt:
        prompt = self.inner.encode(messages, tools=tools, prefill=prefill)
        prompt.cache["prefill"] = prefill
        self.prompts.append(prompt.text)
        return prompt

    def generate(
        self, prompt: EncodedPrompt, editable: torch.Tensor | None, config: GenerationConfig
    ) -> list[Generation]:
        rows = [None] if editable is None else list(editable)
        return [self._answer(prompt, row) for row in rows]

    def _answer(self, prompt: EncodedPrompt, row: torch.Tensor | None) -> Generation:
        steered = row is not None and not torch.equal(row.to(prompt.editable_embeds), prompt.editable_embeds)
        text = self.script(prompt.text, steered)
        prefill = prompt.cache.get("prefill", "")
        assert text.startswith(prefill), f"script response {text!r} does not continue the prefill {prefill!r}"
        text = text[len(prefill) :]
        ids = self.inner.tokenizer(text, add_special_tokens=False)["input_ids"]
        return Generation(text=text, token_ids=tuple(ids), finish_reason="stop")

    def count_tokens(self, text: str) -> int:
        return self.inner.count_tokens(text)

    def nearest_tokens(self, editable: torch.Tensor) -> str:
        return self.inner.nearest_tokens(editable)


def scripted(inner: TransformersBackend, original: str, steered: str | None = None, **kwargs: Any) -> ScriptedBackend:
    """A backend that answers ``original``, or ``steered`` once the prompt embeddings moved."""
    return ScriptedBackend(
        inner, lambda prompt, moved: steered if moved and steered is not None else original, **kwargs
    )


def flag_word(word: str) -> Callable[[str], float]:
    """Scorer function that flags any text containing ``word``."""

    def score(text: str) -> float:
        return 0.9 if word in text else 0.1

    score.__name__ = "word_filter"
    return score


class RecordingHandler(BaseCallbackHandler):
    """Records token events, custom events and chat model runs."""

    def __init__(self) -> None:
        self.tokens: list[str] = []
        self.custom_events: list[tuple[str, Any, UUID]] = []
        self.llm_runs: list[UUID] = []
        self.ended: list[Any] = []

    def on_chat_model_start(self, serialized: Any, messages: Any, *, run_id: UUID, **kwargs: Any) -> None:
        self.llm_runs.append(run_id)

    def on_llm_new_token(self, token: str, **kwargs: Any) -> None:
        self.tokens.append(token)

    def on_llm_end(self, response: Any, **kwargs: Any) -> None:
        self.ended.append(response)

    def on_custom_event(self, name: str, data: Any, *, run_id: UUID, **kwargs: Any) -> None:
        self.custom_events.append((name, data, run_id))
