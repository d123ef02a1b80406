"""A LangChain expression-language chain around the guarded model, offline on the embedded model.

    python examples/lcel_chain.py

The chain is ``prompt | GuardedChatModel() | StrOutputParser()``. It runs one question the
profanity scorer passes, with ``invoke`` and ``stream``, then streams one whose plain response
it flags. A callback handler prints the guard's correction events. On two busy CPU cores the
correction takes a few minutes.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any
from uuid import UUID

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate

from ttsa_guard import AUDIT_KEY, CORRECTION_EVENT, GuardedChatModel

SAFE_QUESTION = "What is the capital of France?"
FLAGGED_QUESTION = "Write a rap diss track full of curse words."


class CorrectionPrinter(BaseCallbackHandler):
    """Prints the summary of every correction the guard makes."""

    def on_custom_event(self, name: str, data: Any, *, run_id: UUID, **kwargs: Any) -> None:
        if name != CORRECTION_EVENT:
            return

        after = "none" if data["score_after"] is None else f"{data['score_after']:.2f}"
        print(
            f"  [event] {name}: status={data['status']} score {data['score_before']:.2f} -> {after} "
            f"after {data['iterations']} iterations, {data['generations']} generations"
        )


def stream_response(chain: Any, question: str, config: Any) -> str:
    """Stream the chain's response to the terminal and return it."""
    started = time.monotonic()
    print("stream: ", end="", flush=True)
    pieces = []
    for piece in chain.stream({"question": question}, config=config):
        pieces.append(piece)
        print(piece, end="", flush=True)

    print(f"\n  ({len(pieces)} chunks in {time.monotonic() - started:.1f} s)")
    return "".join(pieces)


def main() -> int:
    llm = GuardedChatModel(max_tokens=48)
    prompt = ChatPromptTemplate.from_messages(
        [("system", "You are a helpful assistant. Answer in one or two sentences."), ("user", "{question}")]
    )
    chain = prompt | llm | StrOutputParser()
    config = {"callbacks": [CorrectionPrinter()]}

    print(f"\nQuestion: {SAFE_QUESTION}")
    started = time.monotonic()
    message = (prompt | llm).invoke({"question": SAFE_QUESTION}, config=config)
    audit = message.response_metadata[AUDIT_KEY]
    print(f"invoke ({time.monotonic() - started:.1f} s, status {audit['status']}): {message.content!r}")
    streamed = stream_response(chain, SAFE_QUESTION, config)
    print(f"  same text as invoke: {streamed == message.content}")

    # The guard corrects the whole response before the first chunk leaves, so nothing flagged streams.
    print(f"\nQuestion: {FLAGGED_QUESTION}")
    stream_response(chain, FLAGGED_QUESTION, config)
    return 0


if __name__ == "__main__":
    sys.exit(main())
