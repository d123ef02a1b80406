"""LangChain's standard unit tests for chat models, on the tiny random Llama."""

from __future__ import annotations

from typing import Any

import pytest
from langchain_tests.unit_tests import ChatModelUnitTests

from ttsa_guard import GuardedChatModel
from ttsa_guard.backends.transformers import TransformersBackend


@pytest.fixture(scope="module")
def module_backend(tiny_model, tiny_tokenizer) -> TransformersBackend:
    return TransformersBackend(tiny_model, tiny_tokenizer, name="tiny-llama")


class TestGuardedChatModelUnit(ChatModelUnitTests):
    @pytest.fixture(autouse=True)
    def _backend(self, module_backend: TransformersBackend) -> None:
        # chat_model_params is a property without fixtures, so the tiny backend is stored first.
        self.backend = module_backend

    @property
    def chat_model_class(self) -> type[GuardedChatModel]:
        return GuardedChatModel

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {"backend": self.backend, "scorer": _never_flag}


def _never_flag(text: str) -> float:
    return 0.0
