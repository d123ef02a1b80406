"""LangChain's standard integration tests for chat models, on the embedded SmolLM2-135M model.

Every capability the 135M model lacks is declared below through the suite's flags, so the
suite skips those tests with its own reason. Tool calling on a 135M model is covered by
``integration/test_langchain_agents.py`` and, with scripted responses, by the unit tests.
"""

from __future__ import annotations

from typing import Any

from langchain_tests.integration_tests import ChatModelIntegrationTests

from ttsa_guard import GuardedChatModel
from ttsa_guard.backends.loading import embedded_gguf_path


class TestGuardedChatModelIntegration(ChatModelIntegrationTests):
    @property
    def chat_model_class(self) -> type[GuardedChatModel]:
        return GuardedChatModel

    @property
    def chat_model_params(self) -> dict[str, Any]:
        # 16 new tokens keep each generation near a second on two CPU cores.
        return {"max_tokens": 16}

    @property
    def has_tool_calling(self) -> bool:
        # The 135M model seldom calls a tool unforced and fills forced calls with wrong arguments.
        return False

    @property
    def has_structured_output(self) -> bool:
        # Structured output goes through tool calling, which the 135M model cannot fill reliably.
        return False

    @property
    def supports_json_mode(self) -> bool:
        # Decoding is not constrained to JSON, and the 135M model does not keep to a JSON shape.
        return False

    @property
    def supports_image_inputs(self) -> bool:
        # SmolLM2-135M-Instruct reads text only.
        return False

    @property
    def supports_image_urls(self) -> bool:
        # SmolLM2-135M-Instruct reads text only.
        return False

    @property
    def supports_pdf_inputs(self) -> bool:
        # SmolLM2-135M-Instruct reads text only.
        return False

    @property
    def supports_audio_inputs(self) -> bool:
        # SmolLM2-135M-Instruct reads text only.
        return False

    @property
    def supports_video_inputs(self) -> bool:
        # SmolLM2-135M-Instruct reads text only.
        return False

    @property
    def supports_image_tool_message(self) -> bool:
        # SmolLM2-135M-Instruct reads text only.
        return False

    @property
    def supports_pdf_tool_message(self) -> bool:
        # SmolLM2-135M-Instruct reads text only.
        return False

    @property
    def supports_anthropic_inputs(self) -> bool:
        # Anthropic-style content blocks include images and tool blocks the guard does not read.
        return False

    @property
    def enable_vcr_tests(self) -> bool:
        # The model runs in-process, so there are no HTTP requests to record and replay.
        return False

    @property
    def model_override_value(self) -> str:
        # The only other model spec available offline: the embedded model's GGUF file by path.
        # It names the same weights, so these tests check the per-call override, not a second model.
        return str(embedded_gguf_path())
