"""Integration tests run the real embedded model and real servers on loopback."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest


@pytest.fixture(scope="session")
def embedded_llm():
    """The guard on the embedded SmolLM2-135M-Instruct model and the offline profanity scorer."""
    from ttsa_guard import GuardedChatModel

    llm = GuardedChatModel()
    llm.get_guard()
    return llm
