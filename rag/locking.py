"""One writer at a time per data dir, across processes and threads.

`WriteLock(data_dir)` holds `<data_dir>/.write.lock` with flock (through `filelock`), so the
kernel releases it when its holder dies, even by SIGKILL: a lock is never left stale. After
acquiring it, the holder writes `<data_dir>/.write.lock.owner` (pid, command, start time) so a
second writer can say who it waits for. Within one process a re-entrant thread lock per data
dir comes first, so threads queue the same way and a writer may nest (an ingest that deletes).

Readers take no lock: see `PaperStore.sync` for how they stay consistent with a writer in
another process.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from .errors import DataDirError, IndexBusyError

LOCK_NAME = ".write.lock"
OWNER_NAME = ".write.lock.owner"


class _DirLock:
    """The per-process state of one data dir's lock."""

    def __init__(self, folder: Path):
        from filelock import FileLock

        self.thread_lock = threading.RLock()
        # thread_local=False: the file lock is taken once per process (depth counts nesting).
        self.file_lock = FileLock(str(folder / LOCK_NAME), thread_local=False)
        self.depth = 0


_locks: dict[str, _DirLock] = {}
_locks_guard = threading.Lock()


def _dir_lock(folder: Path) -> _DirLock:
    key = os.path.realpath(folder)
    with _locks_guard:
        if key not in _locks:
            _locks[key] = _DirLock(Path(key))
        return _locks[key]


def read_owner(data_dir: Path) -> dict:
    """Who holds the lock, as written by the holder ({} if unknown)."""
    try:
        data = json.loads((Path(data_dir) / OWNER_NAME).read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def describe_owner(owner: dict) -> str:
    """'pid 4242: rag ingest big.jsonl, for 12 s' (or 'pid unknown')."""
    if not owner.get("pid"):
        return "pid unknown"
    text = f"pid {owner['pid']}"
    if owner.get("command"):
        text += f": {owner['command'][:80]}"
    if isinstance(owner.get("started"), (int, float)):
        text += f", for {max(0.0, time.time() - owner['started']):.0f} s"
    return text


def _command() -> str:
    argv = [Path(sys.argv[0]).name if sys.argv else "python", *sys.argv[1:]]
    if argv[0] in ("cli.py", "__main__.py", "-m"):
        argv[0] = "rag"
    return " ".join(argv)


class WriteLock:
    """`with WriteLock(data_dir):` = this process (and thread) is the only writer.

    wait=True blocks until the current writer is done, after telling `on_wait` (one line:
    "another ingest (pid N) is running; waiting ..."); wait=False raises IndexBusyError.
    Re-entrant within a thread.
    """

    def __init__(self, data_dir: Path | str, *, wait: bool = True,
                 on_wait: Callable[[str], None] | None = None):
        self.folder = Path(data_dir)
        self.wait = wait
        self.on_wait = on_wait
        self._lock: _DirLock | None = None
        self.outermost = False

    def __enter__(self) -> WriteLock:
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DataDirError.from_os_error(self.folder, exc) from None
        lock = _dir_lock(self.folder)
        if not lock.thread_lock.acquire(blocking=False):
            self._busy(f"another ingest in this process (pid {os.getpid()}) is running")
            lock.thread_lock.acquire()
        try:
            if lock.depth == 0:
                self._acquire_file(lock)
            lock.depth += 1
        except BaseException:
            lock.thread_lock.release()
            raise
        self._lock = lock
        self.outermost = lock.depth == 1
        return self

    def _busy(self, who: str) -> None:
        if not self.wait:
            raise IndexBusyError(f"{who}; it is writing to {self.folder}")
        if self.on_wait is not None:
            self.on_wait(f"{who}; waiting ...")

    def _acquire_file(self, lock: _DirLock) -> None:
        from filelock import Timeout

        try:
            try:
                lock.file_lock.acquire(timeout=0)
            except Timeout:
                self._busy(f"another ingest ({describe_owner(read_owner(self.folder))}) is running")
                lock.file_lock.acquire()
        except OSError as exc:  # the lock file cannot be created: a read-only folder
            raise DataDirError.from_os_error(self.folder, exc) from None
        owner = {"pid": os.getpid(), "command": _command(), "started": time.time()}
        tmp = self.folder / f"{OWNER_NAME}.{os.getpid()}"
        try:
            tmp.write_text(json.dumps(owner), encoding="utf-8")
            tmp.replace(self.folder / OWNER_NAME)
        except OSError:
            pass  # the name of the holder is a courtesy; the lock itself is held

    def __exit__(self, *exc_info) -> None:
        lock = self._lock
        assert lock is not None
        lock.depth -= 1
        try:
            if lock.depth == 0:
                try:
                    (self.folder / OWNER_NAME).unlink(missing_ok=True)
                except OSError:
                    pass
                lock.file_lock.release()
        finally:
            lock.thread_lock.release()
            self._lock = None
