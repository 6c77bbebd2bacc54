"""Keeping the lexicon (`rag.lexicon`) in step with the store, and the reads it serves
(BM25 for a revision, corpus names, papers listed by title).

`LexiconSync` is part of `rag.store.PaperStore`; kept apart so each file holds one job.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, cast

from .errors import IndexBusyError
from .ingest import ID_PAGE, _pages
from .lexicon import CorpusNames, LexicalIndex, Lexicon
from .locking import WriteLock
from .types import Paper

if TYPE_CHECKING:
    from .store import PaperStore

log = logging.getLogger(__name__)


class LexiconSync:
    if TYPE_CHECKING:  # a part of PaperStore: its attributes are PaperStore's
        def __getattr__(self, name: str) -> Any: ...

    # --- the lexicon: kept in step with every write ---------------------------------------------
    def _reconcile_lexicon(self) -> None:
        """Make the lexicon hold exactly the store's papers (by id and content hash), page by
        page. Only when it does not match the store's revision (a killed write, an older index,
        another client writing to a Chroma server). Caller holds the write lock."""
        lex = self.lexicon
        have = lex.doc_hashes()
        want: dict[str, str] = {}
        for got in self._pages_of(self.papers, ["metadatas"]):
            for pid, m in zip(got["ids"], got["metadatas"]):
                want[pid] = (m or {}).get("content_hash") or ""
        lex.remove([pid for pid in have if pid not in want])
        todo = [pid for pid, h in want.items() if have.get(pid) != h]
        if todo:
            log.info("indexing %d papers lexically (%s)", len(todo), lex.folder)
        for part in _pages(todo, ID_PAGE):
            got = self.papers.get(ids=list(part), include=["documents", "metadatas"])
            rows = {pid: ((m or {}).get("content_hash") or "", (m or {}).get("title", ""), doc or "")
                    for pid, doc, m in zip(got["ids"], got["documents"], got["metadatas"])}
            lex.upsert((pid, *rows[pid]) for pid in part if pid in rows)
        del have, want

    def _lexicon_begin(self) -> None:
        """Start of a write (lock held): the lexicon must match the store before both change;
        it is marked as changing until `_lexicon_end`."""
        lex = self.lexicon
        try:
            if lex.synced != self._revision_and_count(synced=True)[0]:
                self._reconcile_lexicon()
            lex.mark("")
        except sqlite3.DatabaseError as exc:
            if _locked(exc):
                raise
            lex.reset(exc)
            self._reconcile_lexicon()
            lex.mark("")

    def _lexicon_end(self) -> None:
        """End of a write: the lexicon matches the store's new revision; its BM25 is built now,
        so no reader has to."""
        rev = self._revision_and_count(synced=True)[0]
        self.lexicon.mark(rev)
        if self.lexicon.open_build(rev) is None:
            self.lexicon.build(rev)

    def lexical(self, revision: str | None = None) -> tuple[LexicalIndex, bool]:
        """(BM25 index, current): the build for `revision` (memory-mapped); else one made now
        under the write lock; else, while a writer holds the lock, the latest build there is
        (current=False: the writer builds the new one when it is done)."""
        rev = revision or self.revision()
        lex = self.lexicon
        try:
            found = lex.open_build(rev)
            if found is not None:
                return found, True
            try:
                with WriteLock(self.settings.data_dir, wait=False):
                    rev = self.revision()  # the revision as of now, with no writer about
                    found = lex.open_build(rev)
                    if found is not None:
                        return found, True
                    if lex.synced != rev:
                        self._reconcile_lexicon()
                        lex.mark(rev)
                    return lex.build(rev), True
            except IndexBusyError:
                latest = lex.latest_build()
                return (latest if latest is not None else lex.build_in_memory(rev)), False
        except sqlite3.DatabaseError as exc:  # the lexicon file went bad under us
            if _locked(exc):
                raise
            lex.reset(exc)
            return self.lexical(rev)

    def corpus_names(self) -> CorpusNames:
        """`Analyzer.corpus_names` for this index, read from the lexicon per word."""
        return CorpusNames(self.lexicon)

    def list_papers(self, search: str | None = None) -> PaperList:
        """Papers by title (lower-cased); with `search`, title (and id) matches first, then
        abstract matches. A lazy sequence: `len()` counts, slices read only their records."""
        self.lexical()  # the lexicon (which keeps the titles) is current
        lex = self.lexicon
        if search is None or not search:
            return PaperList(cast("PaperStore", self), None, lex)
        needle = search.lower().strip()
        in_title = lex.title_matches(needle)
        seen = set(in_title)
        pattern = "(?i)" + "".join(ch if ch.isalnum() else f"\\x{{{ord(ch):x}}}" for ch in needle)
        hits = (self._read(lambda: self.papers.get(where_document={"$regex": pattern}, include=[])["ids"])
                if needle else [])
        candidates = [pid for pid in hits if pid not in seen]
        in_abstract: list[str] = []
        for part in _pages(lex.order_by_title(candidates), ID_PAGE):
            found = self.get_papers(part)
            in_abstract.extend(pid for pid in part if pid in found and needle in found[pid].abstract.lower())
        return PaperList(cast("PaperStore", self), in_title + in_abstract, lex)


def _locked(exc: sqlite3.DatabaseError) -> bool:
    """Another connection holds the lexicon: wait or fail, but it is no damage to repair."""
    return isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc)


class PaperList(Sequence):
    """Papers in title order, read a page at a time (`PaperStore.list_papers`). Without a
    search it pages through the lexicon's title index; with one it holds the matching ids."""

    def __init__(self, store: PaperStore, ids: list[str] | None, lexicon: Lexicon):
        self.store, self._ids, self.lexicon = store, ids, lexicon

    def __len__(self) -> int:
        return self.lexicon.count() if self._ids is None else len(self._ids)

    def _ids_between(self, start: int, stop: int) -> list[str]:
        if self._ids is not None:
            return self._ids[start:stop]
        out: list[str] = []
        after = None
        pos = 0
        while pos < stop:
            rows = self.lexicon.titles_page(after, min(5000, stop - pos) if pos >= start else min(5000, start - pos))
            if not rows:
                break
            if pos + len(rows) > start:
                out.extend(r[2] for r in rows[max(0, start - pos):])
            pos += len(rows)
            after = rows[-1][:2]
        return out[: stop - start]

    def __getitem__(self, i):
        if isinstance(i, slice):
            start, stop, step = i.indices(len(self))
            if step != 1:
                return [self[j] for j in range(start, stop, step)]
            ids = self._ids_between(start, stop)
            found = self.store.get_papers(ids)
            return [found[pid] for pid in ids if pid in found]
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(i)
        got = self[i:i + 1]
        if not got:
            raise IndexError(i)
        return got[0]

    def titles(self) -> Iterator[str]:
        """The listed papers' titles; without a search, from the lexicon (no record is read)."""
        if self._ids is None:
            return self.lexicon.titles()
        return (p.title for p in self)

    def __iter__(self) -> Iterator[Paper]:
        if self._ids is not None:
            for part in _pages(self._ids, ID_PAGE):
                found = self.store.get_papers(part)
                yield from (found[pid] for pid in part if pid in found)
            return
        after = None
        while True:
            rows = self.lexicon.titles_page(after, ID_PAGE)
            if not rows:
                return
            ids = [r[2] for r in rows]
            found = self.store.get_papers(ids)
            yield from (found[pid] for pid in ids if pid in found)
            after = rows[-1][:2]
