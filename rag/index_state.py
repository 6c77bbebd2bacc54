"""`<data_dir>/paper-rag.json`: what paper-rag knows about the embedded index it built.

Written when paper-rag creates an index and around every write (under the write lock):

- `papers`: how many papers the index held after the last write, so an index that comes
  back empty (a truncated or replaced `chroma.sqlite3`, a removed folder) is reported as
  damaged instead of being silently rebuilt;
- `bundled`: null, "pending" or "done": the bundled corpus is indexed automatically only
  into a new index nobody has written to (or to finish that first indexing);
- `user_writes`: an explicit ingest or delete happened;
- `writing`: a write is under way (or was killed mid-way);
- `generation`: changes at the start and at the end of every write, so other processes
  notice that their view of the index is out of date (see `PaperStore.sync`).
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

MARKER_NAME = "paper-rag.json"
log = logging.getLogger(__name__)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass
class IndexState:
    papers: int = 0
    bundled: str | None = None
    user_writes: bool = False
    writing: bool = False
    generation: str = field(default_factory=lambda: uuid.uuid4().hex)
    created: str = field(default_factory=_now)
    updated: str = field(default_factory=_now)
    format: int = 1

    @classmethod
    def load(cls, data_dir: Path) -> IndexState | None:
        """The marker, or None when there is none. A damaged marker counts as none (with a
        warning): it only ever adds checks, so losing it loses no data."""
        path = Path(data_dir) / MARKER_NAME
        try:
            raw = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.warning("cannot read %s (%s); continuing without it", path, exc.strerror)
            return None
        try:
            data = json.loads(raw)
            known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
            state = cls(**known)
            if not isinstance(state.papers, int) or state.bundled not in (None, "pending", "done"):
                raise ValueError("unexpected values")
            return state
        except (ValueError, TypeError, AttributeError):
            log.warning("%s is damaged; it will be written again at the next ingest", path)
            return None

    def save(self, data_dir: Path) -> None:
        """Atomically (write + rename), so a reader never sees half a file."""
        self.updated = _now()
        path = Path(data_dir) / MARKER_NAME
        tmp = path.with_name(f"{MARKER_NAME}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(asdict(self), indent=1), encoding="utf-8")
        tmp.replace(path)

    def new_generation(self) -> str:
        self.generation = uuid.uuid4().hex
        return self.generation


def read_generation(data_dir: Path) -> str | None:
    """The current generation, cheaply and silently (called once per question)."""
    return read_marker(data_dir)[0]


def read_marker(data_dir: Path) -> tuple[str | None, bool]:
    """(generation, writing) cheaply and silently; (None, False) without a readable marker."""
    try:
        data = json.loads((Path(data_dir) / MARKER_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None, False
    if not isinstance(data, dict):
        return None, False
    gen = data.get("generation")
    return (gen if isinstance(gen, str) else None), data.get("writing") is True
