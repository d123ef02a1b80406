"""Scorer backed by a local transformers sequence-classification model.

Any ``AutoModelForSequenceClassification`` checkpoint works, such as a toxicity or
hate-speech classifier. transformers and torch are imported on first use, so
importing this module stays cheap.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ttsa_guard.errors import ConfigurationError
from ttsa_guard.moderation.base import ModerationResult, validate_threshold
from ttsa_guard.moderation.local import LocalModelScorer

__all__ = ["ClassifierScorer", "is_benign_label"]

_BENIGN_WORDS = frozenset({"safe", "neutral", "ok", "okay", "normal", "benign", "clean", "harmless", "acceptable"})
_NEGATIONS = frozenset({"non", "not", "no"})


def is_benign_label(label: str, num_labels: int) -> bool:
    """Guess whether a classifier label names the harmless class.

    The rule reads the lowercased label as words (runs of letters and digits):

    * ``LABEL_0`` of a two-label model is benign, since such models usually put the
      negative class first.
    * A label that starts with ``non``, ``not`` or ``no`` is benign ("non-toxic",
      "nontoxic", "none", "not_hate") unless a benign word follows, because "not safe"
      names the harmful class.
    * Otherwise a label is benign when one of its words is safe, neutral, ok, okay,
      normal, benign, clean, harmless or acceptable. Whole words are compared, so
      "unsafe" and "toxic" are harmful.

    The rule is a heuristic. Pass ``harmful_labels`` to :class:`ClassifierScorer` when a
    model's labels read otherwise ("Non-Violent Crimes" is harmful in some taxonomies).
    """
    if num_labels == 2 and label.upper() == "LABEL_0":
        return True

    words = re.findall(r"[a-z0-9]+", label.lower())
    if not words:
        return False

    if words[0] in _NEGATIONS:
        return not any(word in _BENIGN_WORDS for word in words[1:])

    if words[0].startswith("non"):
        return True

    return any(word in _BENIGN_WORDS for word in words)


@dataclass(frozen=True)
class _Loaded:
    model: Any
    tokenizer: Any
    harmful: dict[int, str]  # label index -> label name
    multi_label: bool
    max_length: int | None


class ClassifierScorer(LocalModelScorer["_Loaded"]):
    """Scores texts with a sequence-classification model.

    Each text's score is the largest probability among the harmful labels, and
    ``categories`` maps each harmful label to its probability. Multi-label models use a
    sigmoid per label, single-label models a softmax over the labels. The model runs in
    eval mode under ``torch.no_grad``, in batches on its device, and inputs longer than
    the model's maximum length are truncated.

    Args:
        model: A model id or local folder, loaded on first use, or a built model.
        tokenizer: The tokenizer of a built model (required then). Ignored for an id, whose
            own tokenizer is loaded.
        harmful_labels: Labels that count as harmful, by name or index. Default: every label
            that :func:`is_benign_label` does not call benign; a one-label model's label is
            harmful.
        multi_label: True for a sigmoid per label, False for a softmax over labels. Default:
            from ``config.problem_type``, else True for one label and False for more.
        threshold: Score at or above which a text is flagged, in (0, 1]. Default 0.5.
        batch_size: Texts per forward pass, >= 1. Default 16.
        max_length: Tokens kept per text. Default: the smaller of the tokenizer's
            ``model_max_length`` and the model's ``max_position_embeddings``.
        device: Device for a model loaded from an id, unless ``model_kwargs`` has a ``device_map``.
            Default: ``cuda`` when available, else ``cpu``. A built model is moved only when given.
        model_kwargs: Extra keyword arguments for ``from_pretrained``, such as ``dtype``.
        name: Name shown in audit records. Default ``classifier:<id>``.

    Raises:
        ConfigurationError: An option is invalid or names an unknown label.
        ModelLoadError: The model or tokenizer cannot be loaded.
    """

    kind = "classifier"
    auto_class = "AutoModelForSequenceClassification"
    description = "classifier"

    def __init__(
        self,
        model: str | os.PathLike[str] | Any,
        *,
        tokenizer: Any = None,
        harmful_labels: Sequence[str | int] | None = None,
        multi_label: bool | None = None,
        threshold: float = 0.5,
        batch_size: int = 16,
        max_length: int | None = None,
        device: str | None = None,
        model_kwargs: Mapping[str, Any] | None = None,
        name: str | None = None,
    ) -> None:
        if isinstance(harmful_labels, str):
            msg = f"harmful_labels must be a list of labels, got the single string {harmful_labels!r}."
            raise ConfigurationError(msg)

        super().__init__(
            model,
            tokenizer=tokenizer,
            batch_size=batch_size,
            max_length=max_length,
            device=device,
            model_kwargs=model_kwargs,
            name=name,
        )
        self.harmful_labels = list(harmful_labels) if harmful_labels is not None else None
        self.multi_label = multi_label
        self.threshold = validate_threshold(threshold)
        self._load_if_built()

    def _prepare(self, model: Any, tokenizer: Any) -> _Loaded:
        if tokenizer.pad_token is None:
            msg = f"The tokenizer of {self.name} has no pad token, so texts cannot be batched. Set tokenizer.pad_token."
            raise ConfigurationError(msg)

        # Dropout must be off, or the same text gets different scores.
        model.eval()
        config = model.config
        num_labels = int(config.num_labels)
        labels = {index: str(config.id2label.get(index, f"LABEL_{index}")) for index in range(num_labels)}
        return _Loaded(
            model=model,
            tokenizer=tokenizer,
            harmful=self._harmful(labels),
            multi_label=self._activation(config.problem_type, num_labels),
            max_length=self._limit(tokenizer, config),
        )

    def _from_pretrained(self, source: str) -> tuple[Any, Any]:
        model, tokenizer = super()._from_pretrained(source)
        if tokenizer.pad_token is None and tokenizer.eos_token is not None:
            tokenizer.pad_token = tokenizer.eos_token
            model.config.pad_token_id = tokenizer.pad_token_id

        return model, tokenizer

    def _harmful(self, labels: dict[int, str]) -> dict[int, str]:
        if self.harmful_labels is None:
            if len(labels) == 1:
                return dict(labels)

            harmful = {index: label for index, label in labels.items() if not is_benign_label(label, len(labels))}
            if not harmful:
                msg = (
                    f"Every label of {self.name} looks benign ({list(labels.values())}); "
                    "pass harmful_labels= to say which ones are harmful."
                )
                raise ConfigurationError(msg)

            return harmful

        by_name = {label: index for index, label in labels.items()}
        harmful = {}
        for entry in self.harmful_labels:
            index = entry if isinstance(entry, int) and not isinstance(entry, bool) else by_name.get(str(entry))
            if index is None or index not in labels:
                msg = f"harmful_labels entry {entry!r} is not a label of {self.name}; its labels are {labels}."
                raise ConfigurationError(msg)

            harmful[index] = labels[index]

        if not harmful:
            msg = "harmful_labels is empty; name at least one label."
            raise ConfigurationError(msg)

        return harmful

    def _activation(self, problem_type: str | None, num_labels: int) -> bool:
        if self.multi_label is not None:
            return self.multi_label

        if problem_type == "multi_label_classification":
            return True

        if problem_type == "single_label_classification":
            return False

        if problem_type == "regression":
            msg = (
                f"{self.name} is a regression model, whose outputs are not probabilities. Pass "
                "multi_label=True to read each output as a logit through a sigmoid."
            )
            raise ConfigurationError(msg)

        return num_labels == 1

    def _score(self, texts: list[str], prompts: list[str | None]) -> list[ModerationResult]:
        import torch

        loaded = self._ensure_loaded()
        device = next(loaded.model.parameters()).device
        harmful_indices = list(loaded.harmful)
        results = []
        with torch.no_grad():
            for start in range(0, len(texts), self.batch_size):
                batch = texts[start : start + self.batch_size]
                encoded = loaded.tokenizer(
                    batch,
                    padding=True,
                    truncation=loaded.max_length is not None,
                    max_length=loaded.max_length,
                    return_tensors="pt",
                ).to(device)
                logits = loaded.model(**encoded).logits.float()  # [B, num_labels]
                probabilities = torch.sigmoid(logits) if loaded.multi_label else torch.softmax(logits, dim=-1)
                harmful = probabilities[:, harmful_indices].cpu().tolist()  # [B, H]
                results.extend(self._to_result(row, loaded) for row in harmful)

        return results

    def _to_result(self, row: list[float], loaded: _Loaded) -> ModerationResult:
        categories = {label: min(max(value, 0.0), 1.0) for label, value in zip(loaded.harmful.values(), row, strict=True)}
        score = max(categories.values())
        return ModerationResult(score=score, flagged=score >= self.threshold, categories=categories)

    def __repr__(self) -> str:
        return f"ClassifierScorer(name={self.name!r}, threshold={self.threshold}, batch_size={self.batch_size})"
