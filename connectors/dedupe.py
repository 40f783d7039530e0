"""request_ids already handed to a device, so a re-delivered record is not sent twice.

Kept in memory (bounded, oldest forgotten first) and, when a state directory is set,
appended to a journal file that the next start reads back. A SIGKILLed connector re-reads
its uncommitted records; the journal lets it recognise those it had already sent. The
line is written before the command leaves the process: a crash in between costs a command
that waits for its deadline (``expired``/``timed_out``), never one run twice.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import TextIO

from preservarium_pusher_api.core.logging import get_logger

log = get_logger(__name__)

# journal line prefix of a request_id taken back (it surely did not reach the device)
_FORGOTTEN = "!"


class RecentRequests:
    """A bounded set of request_ids, optionally journaled to ``path``."""

    def __init__(self, capacity: int, path: Path | None = None) -> None:
        self._capacity = capacity
        self._ids: OrderedDict[str, None] = OrderedDict()
        self._path = path
        self._journal: TextIO | None = None
        self._lines = 0

    def open(self) -> None:
        """Read the journal back (if any) and open it for appending."""
        if self._path is None:
            return
        self._path.parent.mkdir(parents=True, exist_ok=True)
        if self._path.exists():
            with self._path.open(encoding="utf-8") as journal:
                for line in journal:
                    # a line cut short by a crash is ignored
                    if not line.endswith("\n") or not (entry := line.strip()):
                        continue
                    if entry.startswith(_FORGOTTEN):
                        self._ids.pop(entry[1:], None)
                    else:
                        self._add(entry)
            log.info("sent-command journal read", path=str(self._path), request_ids=len(self))
        self._rewrite()

    def close(self) -> None:
        """Flush and close the journal."""
        if self._journal is not None:
            self._journal.close()
            self._journal = None

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, request_id: str) -> bool:
        return request_id in self._ids

    def remember(self, request_id: str) -> None:
        """Note a request_id as handed to the device (journaled before returning)."""
        self._add(request_id)
        if self._journal is not None:
            self._journal.write(request_id + "\n")
            # to the OS now: survives the process being killed
            self._journal.flush()
            self._lines += 1
            if self._lines > 2 * self._capacity:
                self._rewrite()

    def forget(self, request_id: str) -> None:
        """Undo ``remember`` for a command that surely did not leave this process."""
        self._ids.pop(request_id, None)
        if self._journal is not None:
            self._journal.write(_FORGOTTEN + request_id + "\n")
            self._journal.flush()
            self._lines += 1

    def _add(self, request_id: str) -> None:
        self._ids[request_id] = None
        self._ids.move_to_end(request_id)
        while len(self._ids) > self._capacity:
            self._ids.popitem(last=False)

    def _rewrite(self) -> None:
        # compaction: the journal holds what memory holds, written to a new file and renamed
        if self._path is None:
            return
        self.close()
        temporary = self._path.with_suffix(".tmp")
        with temporary.open("w", encoding="utf-8") as journal:
            journal.writelines(request_id + "\n" for request_id in self._ids)
        temporary.replace(self._path)
        self._lines = len(self._ids)
        self._journal = self._path.open("a", encoding="utf-8")
