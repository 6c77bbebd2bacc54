"""Opening Chroma: the embedded store in the data dir, or a server (RAG_CHROMA_URL), with
damage and access problems turned into clear errors before Chroma hides them."""

from __future__ import annotations

import logging
from urllib.parse import urlparse

from .errors import ConfigError, DataDirError, IndexCorruptError
from .settings import Settings, redact_url

log = logging.getLogger(__name__)

_SQLITE_HEADER = b"SQLite format 3\x00"


def check_index_file(settings: Settings) -> None:
    """A chroma.sqlite3 that is empty or not SQLite is damage; Chroma would open a 0-byte
    file as a new, empty index and the papers would be gone without a word."""
    db = settings.chroma_path / "chroma.sqlite3"
    try:
        with db.open("rb") as fh:
            head = fh.read(len(_SQLITE_HEADER))
    except FileNotFoundError:
        return
    except IsADirectoryError:
        head = b""
    except OSError as exc:
        raise DataDirError.from_os_error(settings.data_dir, exc) from None
    if head != _SQLITE_HEADER:
        what = "is empty (0 bytes)" if not head else "is not an SQLite database"
        raise IndexCorruptError.at(settings.data_dir, f"the index file {db} {what}; the index is damaged")


def _forget_cached_client(path: str) -> None:
    """Chroma shares one client per path within a process; a reopen needs a new one."""
    try:
        from chromadb.api.shared_system_client import SharedSystemClient

        with SharedSystemClient._refcount_lock:
            SharedSystemClient._identifier_to_system.pop(path, None)
            SharedSystemClient._identifier_to_refcount.pop(path, None)
    except (ImportError, AttributeError):  # another chromadb layout: the cached client is reused
        log.debug("cannot drop chromadb's cached client for %s", path)


def make_client(settings: Settings):
    import chromadb
    import chromadb.errors
    from chromadb.config import Settings as ChromaSettings

    chroma_settings = ChromaSettings(anonymized_telemetry=False, allow_reset=True)
    if settings.chroma_url:
        url = urlparse(settings.chroma_url)
        try:
            port = url.port or (443 if url.scheme == "https" else 8000)
            return chromadb.HttpClient(host=url.hostname or "", port=port, ssl=url.scheme == "https",
                                       settings=chroma_settings)
        except Exception as exc:  # the client checks the server at construction
            raise ConfigError(f"cannot reach the Chroma server at {redact_url(settings.chroma_url)} "
                              f"({type(exc).__name__})",
                              "Start it with `chroma run --path DIR --port PORT`, or unset RAG_CHROMA_URL "
                              "to use the embedded store.") from None
    path = settings.chroma_path
    check_index_file(settings)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataDirError.from_os_error(settings.data_dir, exc) from None
    _forget_cached_client(str(path))  # every store gets its own client (see PaperStore.sync)
    try:
        return chromadb.PersistentClient(path=str(path), settings=chroma_settings)
    except OSError as exc:
        raise DataDirError.from_os_error(settings.data_dir, exc) from None
    except chromadb.errors.ChromaError as exc:
        text = str(exc)
        if "readonly" in text or "unable to open" in text:
            raise DataDirError(f"the index at {path} cannot be opened for writing ({text}); Chroma needs "
                               f"write access to its folder even to read") from None
        raise IndexCorruptError.at(settings.data_dir, f"the index at {path} cannot be opened ({text})") from None
