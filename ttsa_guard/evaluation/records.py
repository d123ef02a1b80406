"""Evaluation records and the append-only JSONL file that stores them.

Each record is one line, written with a single ``write`` and then flushed and
fsynced, so a crash or a kill can tear at most the line in flight. Opening the
file again drops a torn last line with a warning, and the run resumes after the
last complete record.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from types import TracebackType
from typing import IO, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from ttsa_guard.audit import StepAudit
from ttsa_guard.errors import InvalidInputError

__all__ = ["EvalRecord", "RecordFile", "RecordFileError", "RecordStatus"]

logger = logging.getLogger(__name__)

RecordStatus = Literal["passed", "corrected", "unresolved", "refused", "error"]


class RecordFileError(InvalidInputError):
    """A records file has an unreadable line before its last one, so it was not written by a crash."""


class EvalRecord(BaseModel):
    """Outcome of the plain and the guarded model on one prompt."""

    model_config = ConfigDict(extra="ignore")

    id: str
    prompt: str
    """The prompt as written in the dataset."""
    input: str
    """The user message sent to the model (the prompt placed in the template)."""
    model: str
    scorer: str
    status: RecordStatus
    """The guard's status (see :class:`~ttsa_guard.audit.GuardAudit`), or ``error`` when the
    guarded call raised; ``error`` then holds the exception."""
    plain_response: str | None
    """The unguarded model's response; None when the call raised before returning it."""
    plain_score: float | None
    flagged_before: bool | None
    guarded_response: str | None
    """The guarded model's output; None when the call raised."""
    guarded_score: float | None
    """None for a refusal text, which the guard does not score."""
    flagged_after: bool | None
    refusal: bool = False
    """Whether the guarded response reads as a refusal (see :func:`~ttsa_guard.evaluation.is_refusal`)."""
    iterations: int = 0
    generations: int = 0
    """Generations spent, the plain response included."""
    scores: int = 0
    """Texts sent to the scorer, the plain response included."""
    seconds: float = 0.0
    """Wall-clock seconds of the guarded call, plain generation included."""
    cosine_similarity: float | None = None
    """Mean cosine similarity of the steered prompt embeddings to the original; None if not steered."""
    stop_reason: str | None = None
    error: str | None = None
    """``ExceptionClass: message`` when status is ``error``."""
    history: list[StepAudit] = []
    """One entry per optimizer iteration."""

    @property
    def neutralized(self) -> bool:
        """Whether a flagged plain response became a scored, unflagged guarded response."""
        return self.flagged_before is True and self.flagged_after is False


class RecordFile:
    """An append-only JSONL file of :class:`EvalRecord`, one line per prompt.

    Args:
        path: The file; it and its folder are created on the first append.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._handle: IO[bytes] | None = None

    def load(self) -> list[EvalRecord]:
        """Read the finished records, dropping a torn last line and later duplicates of an id.

        Raises:
            RecordFileError: A line other than the last is not a valid record.
        """
        if not self.path.exists():
            return []

        data = self.path.read_bytes()
        records: list[EvalRecord] = []
        seen: set[str] = set()
        position = 0
        while position < len(data):
            newline = data.find(b"\n", position)
            end = len(data) if newline == -1 else newline + 1
            line = data[position:end]
            record = _parse(line)
            if record is None and line.strip():
                if data[end:].strip():
                    msg = (
                        f"{self.path}: the record starting at byte {position} is not valid, and complete "
                        "records follow it, so a crash did not cause it. Fix or remove that line."
                    )
                    raise RecordFileError(msg)

                self._truncate(position, len(line))
                break

            if record is not None and newline == -1:
                self._repair_last_newline()

            if record is not None and record.id in seen:
                logger.warning("%s: id %r appears more than once; the first record is kept", self.path, record.id)
            elif record is not None:
                seen.add(record.id)
                records.append(record)

            position = end

        return records

    def append(self, record: EvalRecord) -> None:
        """Write one record as a line, then flush and fsync it."""
        if self._handle is None:
            self._handle = self._open()

        line = record.model_dump_json() + "\n"
        self._handle.write(line.encode("utf-8"))
        self._handle.flush()
        os.fsync(self._handle.fileno())

    def close(self) -> None:
        """Close the file; a later append opens it again."""
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def __enter__(self) -> RecordFile:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()

    def _open(self) -> IO[bytes]:
        created = not self.path.exists()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = self.path.open("ab")
        if created:
            # Persist the new directory entry too, so the file itself survives a crash.
            directory = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(directory)
            finally:
                os.close(directory)

        return handle

    def _truncate(self, size: int, torn_bytes: int) -> None:
        logger.warning(
            "%s: dropped a torn last line (%d bytes) left by an interrupted run; its prompt runs again",
            self.path,
            torn_bytes,
        )
        with self.path.open("r+b") as handle:
            handle.truncate(size)
            handle.flush()
            os.fsync(handle.fileno())

    def _repair_last_newline(self) -> None:
        """End a complete last record with its newline, so the next append starts a new line."""
        with self.path.open("ab") as handle:
            handle.write(b"\n")
            handle.flush()
            os.fsync(handle.fileno())


def _parse(line: bytes) -> EvalRecord | None:
    """Return the record on ``line``, or None for a blank or invalid line."""
    if not line.strip():
        return None

    try:
        return EvalRecord.model_validate(json.loads(line))
    except (UnicodeDecodeError, json.JSONDecodeError, ValidationError):
        return None
