"""Shared plumbing of scorers that run a local transformers model.

The model loads on first use under a lock, or at construction when a built model is
passed in. transformers and torch are imported on first use, so importing a scorer
module stays cheap.
"""

from __future__ import annotations

import os
import threading
from abc import abstractmethod
from collections.abc import Mapping
from typing import Any, Generic, TypeVar

from ttsa_guard.errors import ConfigurationError, ModelLoadError
from ttsa_guard.moderation.base import BaseScorer

__all__ = ["LocalModelScorer"]

# Limits at or above this mean "no limit", such as the int(1e30) of tokenizers without one.
_NO_LIMIT = 10**9

Loaded = TypeVar("Loaded")


class LocalModelScorer(BaseScorer, Generic[Loaded]):
    """Base of the classifier and guard-model scorers.

    Subclasses set ``kind``, implement :meth:`_from_pretrained` and :meth:`_prepare`, and
    call :meth:`_load_if_built` at the end of ``__init__``, after their own fields are set.
    """

    kind = "model"
    """Prefix of the default scorer name, such as ``classifier`` or ``guard``."""

    auto_class = "AutoModel"
    """Name of the transformers auto class that loads the model from an id or folder."""

    description = "model"
    """Model description used in error messages, such as ``classifier`` or ``guard model``."""

    def __init__(
        self,
        model: str | os.PathLike[str] | Any,
        *,
        tokenizer: Any,
        batch_size: int,
        max_length: int | None,
        device: str | None,
        model_kwargs: Mapping[str, Any] | None,
        name: str | None,
    ) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            msg = f"batch_size must be an int >= 1, got {batch_size!r}."
            raise ConfigurationError(msg)

        if max_length is not None and (not isinstance(max_length, int) or max_length < 1):
            msg = f"max_length must be None or an int >= 1, got {max_length!r}."
            raise ConfigurationError(msg)

        self._source = os.fspath(model) if isinstance(model, (str, os.PathLike)) else None
        if self._source is None and tokenizer is None:
            msg = f"{type(self).__name__} needs tokenizer= when given a built model instead of an id or folder."
            raise ConfigurationError(msg)

        self._model = None if self._source is not None else model
        self._tokenizer = tokenizer
        self.batch_size = batch_size
        self.max_length = max_length
        self.device = device
        self.model_kwargs = dict(model_kwargs or {})
        self.name = name or (f"{self.kind}:{self._source}" if self._source else self.kind)
        self._loaded: Loaded | None = None
        self._lock = threading.Lock()

    def load(self) -> None:
        """Load the model and tokenizer now instead of on the first score."""
        self._ensure_loaded()

    def _load_if_built(self) -> None:
        if self._source is None:
            self.load()

    def _ensure_loaded(self) -> Loaded:
        with self._lock:
            if self._loaded is None:
                self._loaded = self._prepare(*self._place())

            return self._loaded

    def _place(self) -> tuple[Any, Any]:
        """Load the model from its source, or take the built one, and move it to its device."""
        import torch

        if self._source is None:
            if self.device is not None:
                self._model.to(self.device)
            return self._model, self._tokenizer

        model, tokenizer = self._from_pretrained(self._source)
        # A device_map in model_kwargs has placed the weights already.
        if "device_map" not in self.model_kwargs:
            # NOTE: the tests run on CPU only, so this CUDA default is untested.
            model.to(self.device or ("cuda" if torch.cuda.is_available() else "cpu"))

        return model, tokenizer

    def _limit(self, tokenizer: Any, config: Any) -> int | None:
        """Return ``max_length``, else the smaller of the tokenizer's and the model's limits."""
        if self.max_length is not None:
            return self.max_length

        candidates = [tokenizer.model_max_length, getattr(config, "max_position_embeddings", None)]
        limits = [value for value in candidates if isinstance(value, int) and 0 < value < _NO_LIMIT]
        return min(limits, default=None)

    def _from_pretrained(self, source: str) -> tuple[Any, Any]:
        """Load ``(model, tokenizer)`` from a model id or folder with ``auto_class``."""
        try:
            import transformers
        except ImportError as exc:
            msg = f"{type(self).__name__} needs transformers: pip install transformers"
            raise ModelLoadError(msg) from exc

        try:
            tokenizer = transformers.AutoTokenizer.from_pretrained(source)
            model = getattr(transformers, self.auto_class).from_pretrained(source, **self.model_kwargs)
        except (OSError, ValueError) as exc:
            msg = (
                f"Could not load the {self.description} {source!r}: {exc}. Check the model id or folder. "
                "With HF_HUB_OFFLINE=1 the model must already be in the local cache."
            )
            raise ModelLoadError(msg) from exc

        return model, tokenizer

    @abstractmethod
    def _prepare(self, model: Any, tokenizer: Any) -> Loaded:
        """Check the placed model and tokenizer and return what scoring needs."""
