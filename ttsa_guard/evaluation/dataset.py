"""Prompt sets for evaluation: CSV or JSONL files read into ids and prompt texts.

A CSV file needs a header row and is read with Python's :mod:`csv` module, so
quoted fields may contain newlines. A JSONL file contains one JSON object per line.
Rows whose prompt is empty or whitespace only are skipped, and their row numbers
are reported. Every other malformed row raises :class:`DatasetError`, which names
the file, the row and what was expected. Two rows with the same id are an error
too, because resuming a run skips prompts by id.
"""

from __future__ import annotations

import csv
import json
import logging
import random
import string
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from ttsa_guard.errors import ConfigurationError, InvalidInputError

__all__ = ["DEFAULT_TEMPLATE", "DatasetError", "Prompt", "PromptSet", "check_template", "load_prompts"]

logger = logging.getLogger(__name__)

DEFAULT_TEMPLATE = "{prompt}"
"""Template that sends the dataset's prompt text unchanged."""

_FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}


class DatasetError(InvalidInputError):
    """A prompt file cannot be read as a prompt set: a missing column, a bad row, a duplicate id."""


@dataclass(frozen=True)
class Prompt:
    """One prompt to evaluate."""

    id: str
    """Value of the id column, or the row number (starting at 1) when there is no id column."""
    text: str
    """The prompt as written in the dataset."""
    input: str
    """The user message sent to the model: ``text`` placed in the template."""
    row: int
    """Position among the file's data rows, starting at 1 (the header is not a data row)."""


@dataclass
class PromptSet:
    """The prompts selected from a file, and the rows that were skipped on the way."""

    prompts: list[Prompt]
    source: str
    """Path of the file the prompts came from."""
    skipped_rows: list[int] = field(default_factory=list)
    """Row numbers whose prompt was empty or whitespace only."""
    total_rows: int = 0
    """Data rows in the file, skipped rows and rows left out by the selection included."""

    def __len__(self) -> int:
        return len(self.prompts)

    def __iter__(self) -> Iterator[Prompt]:
        return iter(self.prompts)


def check_template(template: str) -> str:
    """Return ``template`` if it has exactly one ``{prompt}`` field and no other.

    Raises:
        ConfigurationError: The template has no ``{prompt}`` field, another field, or an
            unmatched brace.
    """
    try:
        fields = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as exc:
        msg = f"Invalid template {template!r}: {exc}. Write literal braces as {{{{ and }}}}."
        raise ConfigurationError(msg) from exc

    if fields != ["prompt"]:
        msg = (
            f"Invalid template {template!r}: it must contain the field {{prompt}} exactly once and "
            f"no other field, but it has {fields or 'no fields'}. Write literal braces as {{{{ and }}}}."
        )
        raise ConfigurationError(msg)

    return template


def load_prompts(
    path: str | Path,
    *,
    prompt_column: str = "prompt",
    id_column: str | None = None,
    template: str = DEFAULT_TEMPLATE,
    where: Mapping[str, str] | None = None,
    offset: int = 0,
    limit: int | None = None,
    sample: int | None = None,
    seed: int = 0,
    file_format: str | None = None,
) -> PromptSet:
    """Read a prompt set from a CSV or JSONL file.

    Rows are filtered by ``where`` first, and rows with an empty prompt are skipped next. Then
    ``offset`` and ``limit`` slice the remaining prompts in file order, or ``sample`` draws that
    many of them at random with ``seed``, returned in file order.

    Args:
        path: The file; ``.csv`` is read as CSV, ``.jsonl`` and ``.ndjson`` as JSON lines.
        prompt_column: Column (CSV) or key (JSONL) with the prompt text.
        id_column: Column with a unique id per row. None (default) numbers rows from 1.
        template: Format string with one ``{prompt}`` field, such as
            ``"Continue this text: {prompt}"``.
        where: Keep only rows whose column equals the value, such as ``{"label": "safe"}``.
        offset: Prompts to leave out at the start.
        limit: Maximum number of prompts. None: all.
        sample: Draw this many prompts at random instead of slicing. None: no sampling.
        seed: Seed of ``sample``.
        file_format: ``"csv"`` or ``"jsonl"``; None (default) picks by the file extension.

    Raises:
        DatasetError: A column is missing, a row is malformed, or two rows share an id.
        ConfigurationError: An invalid template, format or selection.
        FileNotFoundError: The file does not exist.
    """
    path = Path(path)
    if not path.is_file():
        msg = f"Prompt file not found: {path}"
        raise FileNotFoundError(msg)

    check_template(template)
    _check_selection(offset, limit, sample)
    required = [prompt_column, *([id_column] if id_column else []), *(where or {})]
    rows = list(_read_rows(path, _pick_format(path, file_format), required))

    available: list[Prompt] = []
    skipped: list[int] = []
    seen: dict[str, int] = {}
    for row_number, row in rows:
        if where and not all(_cell(path, row_number, row, column) == value for column, value in where.items()):
            continue

        text = _prompt_text(path, row_number, row, prompt_column)
        if not text.strip():
            skipped.append(row_number)
            continue

        prompt_id = str(row_number) if id_column is None else _row_id(path, row_number, row, id_column)
        if prompt_id in seen:
            msg = (
                f"{path}: rows {seen[prompt_id]} and {row_number} share the id {prompt_id!r} in column "
                f"{id_column!r}. Ids must be unique, because resuming a run skips prompts by id; "
                "pick another id column or leave it out to number rows."
            )
            raise DatasetError(msg)

        seen[prompt_id] = row_number
        available.append(Prompt(id=prompt_id, text=text, input=template.format(prompt=text), row=row_number))

    if skipped:
        logger.warning("%s: skipped %d rows with an empty prompt: rows %s", path, len(skipped), _abbreviate(skipped))

    if sample is not None:
        chosen = sorted(random.Random(seed).sample(range(len(available)), min(sample, len(available))))
        selected = [available[index] for index in chosen]
    else:
        end = None if limit is None else offset + limit
        selected = available[offset:end]

    return PromptSet(prompts=selected, source=str(path), skipped_rows=skipped, total_rows=len(rows))


def _check_selection(offset: int, limit: int | None, sample: int | None) -> None:
    if offset < 0:
        msg = f"offset must be 0 or more, got {offset}."
        raise ConfigurationError(msg)

    if limit is not None and limit < 1:
        msg = f"limit must be 1 or more, got {limit}."
        raise ConfigurationError(msg)

    if sample is not None and sample < 1:
        msg = f"sample must be 1 or more, got {sample}."
        raise ConfigurationError(msg)

    if sample is not None and (offset or limit is not None):
        msg = "sample draws prompts at random and cannot be combined with offset or limit; pass one or the other."
        raise ConfigurationError(msg)


def _pick_format(path: Path, file_format: str | None) -> str:
    if file_format is not None:
        if file_format not in ("csv", "jsonl"):
            msg = f"Unknown prompt file format {file_format!r}; accepted: 'csv', 'jsonl'."
            raise ConfigurationError(msg)

        return file_format

    suffix = path.suffix.lower()
    if suffix not in _FORMATS:
        msg = f"Cannot tell the format of {path} from its extension {suffix!r}; use .csv, .jsonl or .ndjson, or pass the format."
        raise ConfigurationError(msg)

    return _FORMATS[suffix]


def _read_rows(path: Path, file_format: str, required: list[str]) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (row number, row) pairs; a CSV header must name the ``required`` columns."""
    if file_format == "jsonl":
        yield from _read_jsonl(path)
        return

    # utf-8-sig drops a byte-order mark, which would otherwise stick to the first column's name.
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle, strict=True)
        try:
            header = reader.fieldnames
            if not header:
                msg = f"{path} is empty; a CSV prompt file needs a header row naming its columns."
                raise DatasetError(msg)

            for column in required:
                if column not in header:
                    _raise_missing_column(path, column, header, "the header")

            for row_number, row in enumerate(reader, start=1):
                if None in row or None in row.values():
                    msg = (
                        f"{path}: row {row_number} (ending on line {reader.line_num}) has a different number "
                        f"of fields than the header's {len(header)} ({', '.join(header)}). Check its quoting."
                    )
                    raise DatasetError(msg)

                yield row_number, row
        except csv.Error as exc:
            msg = f"{path}: invalid CSV near line {reader.line_num}: {exc}."
            raise DatasetError(msg) from exc


def _read_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    row_number = 0
    with path.open(encoding="utf-8-sig") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue

            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                msg = f"{path}: line {line_number} is not valid JSON: {exc}."
                raise DatasetError(msg) from exc

            if not isinstance(row, dict):
                msg = f"{path}: line {line_number} holds a {type(row).__name__}; each line must be a JSON object."
                raise DatasetError(msg)

            row_number += 1
            yield row_number, row


def _raise_missing_column(path: Path, column: str, present: Any, where: str) -> NoReturn:
    msg = f"{path}: column {column!r} not found; {where} has the columns {', '.join(map(repr, present))}."
    raise DatasetError(msg)


def _cell(path: Path, row_number: int, row: Mapping[str, Any], column: str) -> str | None:
    """Return a cell as text (JSON numbers become strings) or None for a JSON null."""
    if column not in row:
        _raise_missing_column(path, column, row, f"row {row_number}")

    value = row[column]
    return value if isinstance(value, str) or value is None else str(value)


def _prompt_text(path: Path, row_number: int, row: Mapping[str, Any], column: str) -> str:
    if column not in row:
        _raise_missing_column(path, column, row, f"row {row_number}")

    value = row[column]
    if value is None:
        return ""

    if not isinstance(value, str):
        msg = f"{path}: row {row_number} has a {type(value).__name__} in the prompt column {column!r}; expected text."
        raise DatasetError(msg)

    return value


def _row_id(path: Path, row_number: int, row: Mapping[str, Any], column: str) -> str:
    value = _cell(path, row_number, row, column)
    if value is None or not value.strip():
        msg = f"{path}: row {row_number} has an empty id in column {column!r}; every row needs an id."
        raise DatasetError(msg)

    return value.strip()


def _abbreviate(numbers: list[int], max_listed: int = 10) -> str:
    head = ", ".join(map(str, numbers[:max_listed]))
    return head if len(numbers) <= max_listed else f"{head} and {len(numbers) - max_listed} more"
