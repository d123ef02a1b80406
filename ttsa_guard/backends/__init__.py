"""Backends turn prompt embeddings into text; see :class:`Backend`."""

from ttsa_guard.backends.base import Backend, EncodedPrompt, Generation
from ttsa_guard.backends.loading import EMBEDDED_MODEL, embedded_gguf_path, load_model_and_tokenizer
from ttsa_guard.backends.transformers import TransformersBackend

__all__ = [
    "Backend",
    "EMBEDDED_MODEL",
    "EncodedPrompt",
    "Generation",
    "TransformersBackend",
    "embedded_gguf_path",
    "load_model_and_tokenizer",
]
