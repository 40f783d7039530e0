"""Answers already given, by request_id, kept on disk so a repeat never moves the robot.

Each answer is appended to ``answers.jsonl`` (fsync'd) before it is returned; a request
that started but has no answer when the agent comes back is answered "interrupted"
instead of being run again.
"""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from pathlib import Path
from typing import Any


def error_body(message: str) -> dict[str, Any]:
    """The agent's error answer: ``{"status": "error", "error": message}``."""
    return {"status": "error", "error": message}


class AnswerBook:
    """Answers by request_id, written to ``answers.jsonl`` before they are returned."""

    def __init__(self, state_dir: Path | None, size: int = 10_000) -> None:
        self._size = size
        self._answers: OrderedDict[str, tuple[int, dict[str, Any]]] = OrderedDict()
        self._path = state_dir / "answers.jsonl" if state_dir else None
        self._file: Any = None
        if self._path is not None:
            state_dir.mkdir(parents=True, exist_ok=True)  # type: ignore[union-attr]
            self._load()
            self._file = self._path.open("a", encoding="utf-8")

    def _load(self) -> None:
        assert self._path is not None
        if not self._path.exists():
            return
        started: set[str] = set()
        lines = 0
        for line in self._path.read_text(encoding="utf-8").splitlines():
            lines += 1
            try:
                entry = json.loads(line)
                request_id = entry["request_id"]
            except (ValueError, KeyError, TypeError):
                continue  # a line cut short by a power loss
            if entry.get("started"):
                started.add(request_id)
            else:
                started.discard(request_id)
                self._keep(request_id, (int(entry["code"]), entry["body"]))
        for request_id in started:
            self._keep(
                request_id,
                (
                    500,
                    error_body(
                        "interrupted: the agent stopped while this command was running; "
                        "check the robot before sending a new command"
                    ),
                ),
            )
        if lines > 2 * self._size:
            self._path.write_text(
                "".join(
                    json.dumps({"request_id": rid, "code": code, "body": body}) + "\n"
                    for rid, (code, body) in self._answers.items()
                ),
                encoding="utf-8",
            )

    def _keep(self, request_id: str, answer: tuple[int, dict[str, Any]]) -> None:
        self._answers[request_id] = answer
        self._answers.move_to_end(request_id)
        while len(self._answers) > self._size:
            self._answers.popitem(last=False)

    def _write(self, entry: dict[str, Any]) -> None:
        if self._file is not None:
            self._file.write(json.dumps(entry) + "\n")
            self._file.flush()
            os.fsync(self._file.fileno())

    def get(self, request_id: str) -> tuple[int, dict[str, Any]] | None:
        """The answer given to ``request_id``, if any."""
        return self._answers.get(request_id)

    def started(self, request_id: str) -> None:
        """Note that ``request_id`` is about to run (so a crash is not mistaken for never)."""
        self._write({"request_id": request_id, "started": True})

    def finished(self, request_id: str, code: int, body: dict[str, Any]) -> None:
        """Store the answer of ``request_id``."""
        self._keep(request_id, (code, body))
        self._write({"request_id": request_id, "code": code, "body": body})

    def close(self) -> None:
        """Close the answers file."""
        if self._file is not None:
            self._file.close()
            self._file = None

    def __len__(self) -> int:
        return len(self._answers)
