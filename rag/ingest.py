"""Writing papers to the index: screening (conflicts, duplicates), the pipelined write
(window i+1 embedded while window i is written), deletes and the orphan sweep.

`IngestMixin` is part of `rag.store.PaperStore`: it uses the store's collections, record
reads and lexicon, and is kept apart only so each file holds one job.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, cast

import numpy as np

from .corpus import abstract_key, normalise_title
from .errors import IndexCorruptError, IndexMissingError
from .index_state import IndexState
from .types import Chunk, Paper

if TYPE_CHECKING:
    from .store import PaperStore

PAGE = 2000  # records per page when a scan cannot be avoided
ID_PAGE = 500  # ids or keys per `get(ids=...)` / `$in` lookup
WINDOW_BATCHES = 32  # ingest embeds up to this many embedding batches of chunks at once, sorted by length
ProgressFactory = Callable[..., Any]


@dataclass(frozen=True)
class IngestIssue:
    """An incoming paper that was not written: it would have replaced another paper
    (`conflict`: same id, another title) or it is already indexed (`duplicate`)."""

    kind: Literal["conflict", "duplicate"]
    paper_id: str
    title: str
    indexed_id: str
    indexed_title: str

    def describe(self) -> str:
        if self.kind == "conflict":
            return (f"id '{self.paper_id}' is already used by '{self.indexed_title[:70]}'; "
                    f"'{self.title[:70]}' was not indexed (nothing was replaced; --replace replaces it)")
        return (f"'{self.title[:70]}' is already indexed as '{self.indexed_id}'"
                + (f" ('{self.indexed_title[:60]}')" if self.indexed_title != self.title else "")
                + "; stored once")


@dataclass
class IngestReport:
    papers_in: int = 0
    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: int = 0
    chunks_embedded: int = 0
    chunks_reused: int = 0
    chunks_deleted: int = 0
    seconds: float = 0.0
    conflicts: list[IngestIssue] = field(default_factory=list)
    duplicates: list[IngestIssue] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.added or self.updated or self.chunks_deleted)

    def summary(self) -> str:
        skipped = ""
        if self.duplicates or self.conflicts:
            skipped = (f", {len(self.duplicates)} already indexed, "
                       f"{len(self.conflicts)} conflict{'s' if len(self.conflicts) != 1 else ''}")
        return (f"{self.papers_in} papers: {len(self.added)} added, {len(self.updated)} updated, "
                f"{self.unchanged} unchanged{skipped}; {self.chunks_embedded} chunks embedded, "
                f"{self.chunks_deleted} removed in {self.seconds:.1f}s")


def content_hash(paper: Paper, chunker_signature: str) -> str:
    blob = json.dumps([paper.title, paper.abstract, paper.url, list(paper.authors), paper.year,
                       paper.metadata, chunker_signature], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


class IngestMixin:
    if TYPE_CHECKING:  # a part of PaperStore: its attributes are PaperStore's
        def __getattr__(self, name: str) -> Any: ...

    # --- the bundled corpus, on first use --------------------------------------------------
    def is_new(self) -> bool:
        """An index nobody has written to yet (or whose automatic first indexing of the
        bundled corpus did not finish). Only such an index gets the bundled corpus
        automatically; an index paper-rag did not create (no marker) never does."""
        if not self._embedded:
            return self.count() == 0  # a server's collection: empty means new
        state = IndexState.load(self.settings.data_dir)
        if state is None:
            return False
        return state.bundled == "pending" or (state.bundled is None and not state.user_writes
                                              and self.count() == 0)

    def index_bundled_if_new(self, load: Callable[[], Sequence[Paper]], progress: ProgressFactory | None = None,
                             on_wait: Callable[[str], None] | None = None) -> IngestReport | None:
        """Index the bundled corpus into a new index; None if the index already has papers.
        An empty index that is not new is an IndexMissingError: nothing is written over it."""
        if self.count() > 0 and not self.is_new():
            return None
        start = time.perf_counter()
        with self.writing(on_wait=on_wait, user=False) as state:
            if not self.is_new():  # another process may have done it while we waited
                if self.count() > 0:
                    return None
                raise IndexMissingError(
                    f"the index at {self.location} has no papers",
                    "Index papers with `rag ingest FILE...`, or the bundled corpus with `rag ingest --bundled`.")
            if state is not None:
                state.bundled = "pending"
                state.save(self.settings.data_dir)
            report = self._ingest_locked(list(load()), progress, replace_all=False, replace=False)
            if state is not None:
                state.bundled = "done"
        report.seconds = time.perf_counter() - start
        return report

    # --- ingest ------------------------------------------------------------
    def ingest(self, papers: Sequence[Paper], progress: ProgressFactory | None = None,
               replace_all: bool = False, replace: bool = False, rebuild: bool = False, wait: bool = True,
               on_wait: Callable[[str], None] | None = None) -> IngestReport:
        """Add new papers, replace changed ones; unchanged ones cost a hash comparison.

        A paper whose id is taken by an indexed paper with another title is a conflict and is
        not written unless `replace`; one whose title or abstract is already indexed under
        another id is a duplicate and is skipped. `rebuild` drops every paper first, within the
        same write. wait=False raises IndexBusyError if another writer holds the data dir.
        """
        start = time.perf_counter()
        with self.writing(wait=wait, on_wait=on_wait):
            report = self._ingest_locked(papers, progress, replace_all, replace, rebuild=rebuild)
        report.seconds = time.perf_counter() - start
        return report

    def _ingest_locked(self, papers: Sequence[Paper], progress, replace_all: bool, replace: bool,
                       rebuild: bool = False) -> IngestReport:
        import chromadb.errors

        try:
            self._lexicon_begin()
            if rebuild:
                self._delete_locked(self._all_ids(self.papers))
            report = self._ingest(papers, progress, replace_all, replace or replace_all, changed=rebuild)
            self._lexicon_end()
            return report
        except chromadb.errors.ChromaError as exc:
            raise IndexCorruptError.at(self.settings.data_dir,
                                       f"writing to the index at {self.location} failed ({exc})") from None

    def _screen(self, papers: Sequence[Paper], records: dict[str, dict[str, Any]], replace: bool,
                report: IngestReport, keep: set[str] | None) -> list[Paper]:
        """Conflicts and duplicates against the index (and earlier papers of the same batch).
        The index is asked only about the incoming titles and abstracts (by their keys)."""
        by_title: dict[str, set[str]] = {}
        by_abstract: dict[str, set[str]] = {}
        titles: dict[str, str] = {}

        def remember(pid: str, title: str, tkey: str, akey: str) -> None:
            titles[pid] = title
            if tkey:
                by_title.setdefault(tkey, set()).add(pid)
            by_abstract.setdefault(akey, set()).add(pid)

        keys = [(normalise_title(p.title), abstract_key(p.abstract)) for p in papers]
        indexed = {**self._records_where("title_key", {t for t, _ in keys if t}),
                   **self._records_where("abstract_key", {a for _, a in keys})}
        for pid, rec in indexed.items():
            if keep is None or pid in keep:  # with replace_all, the others are about to go
                remember(pid, rec["title"], rec["title_key"], rec["abstract_key"])
        accepted: list[Paper] = []
        batch_ids: set[str] = set()
        for p, (tkey, akey) in zip(papers, keys):
            rec = records.get(p.id)
            if rec is not None and rec["title_key"] != tkey and not replace:
                report.conflicts.append(IngestIssue("conflict", p.id, p.title, p.id, rec["title"]))
                continue
            same = [pids for pids in (by_title.get(tkey) if tkey else None, by_abstract.get(akey)) if pids]
            other = next((min(pids) for pids in same if p.id not in pids), None)
            if p.id in batch_ids:
                other = p.id  # the same id twice in one batch: the first one stands
            if other is not None:
                report.duplicates.append(IngestIssue("duplicate", p.id, p.title, other, titles.get(other, "")))
                continue
            accepted.append(p)
            batch_ids.add(p.id)
            remember(p.id, p.title, tkey, akey)
        return accepted

    def _ingest(self, papers: Sequence[Paper], progress, replace_all: bool, replace: bool = False,
                changed: bool = False) -> IngestReport:
        report = IngestReport(papers_in=len(papers))
        signature = self.chunker.signature
        self._ensure_keys()
        total_before = self._collection_meta().get("chunks_total")
        count_before = self.chunks.count()
        records = self._records([p.id for p in papers])
        keep = {p.id for p in papers} if replace_all else None
        papers = self._screen(papers, records, replace, report, keep)
        hashes = [content_hash(p, signature) for p in papers]
        same = [cid for p, h in zip(papers, hashes) if (records.get(p.id) or {}).get("content_hash") == h
                for cid in records[p.id]["chunk_ids"]]
        present = self._existing_ids(self.chunks, same)
        todo: list[tuple[Paper, str]] = []
        for p, h in zip(papers, hashes):
            rec = records.get(p.id)
            if rec and rec["content_hash"] == h and all(cid in present for cid in rec["chunk_ids"]):
                report.unchanged += 1
            else:
                todo.append((p, h))
        del present, same
        bar = progress(total=len(todo), desc="Embedding", unit="paper") if progress and todo else None
        try:
            self._write_papers(todo, records, report, bar)
        finally:
            if bar is not None:
                bar.close()
        if keep is not None:  # replace_all
            stale = [pid for pid in self._all_ids(self.papers) if pid not in keep]
            if stale:
                report.chunks_deleted += self._delete_locked(stale)
        # Orphans (chunks no record lists: a killed ingest, a foreign write) are looked for
        # page by page only when the chunk count is not the one this index's writes explain.
        expected = None if total_before is None or count_before != total_before else \
            count_before + report.chunks_embedded - report.chunks_deleted
        count_after = self.chunks.count()
        if expected is None or count_after != expected:
            report.chunks_deleted += self._sweep_orphans()
            count_after = self.chunks.count()
        if report.changed or changed:
            self._bump_revision(chunks_total=count_after)
        elif total_before != count_after:
            self._set_meta(chunks_total=count_after)
        return report

    # --- the write pipeline --------------------------------------------------------------------
    def _windows(self, todo: Sequence[tuple[Paper, str]]) -> Iterator[list[tuple[Paper, str, list[Chunk]]]]:
        """Papers in input order, grouped so each group holds about WINDOW_BATCHES batches of chunks."""
        limit = WINDOW_BATCHES * self.settings.embedding_batch_size
        window: list[tuple[Paper, str, list[Chunk]]] = []
        n = 0
        for p, h in todo:
            chunks = self.chunker.chunk_paper(p)
            window.append((p, h, chunks))
            n += len(chunks)
            if n >= limit:
                yield window
                window, n = [], 0
        if window:
            yield window

    def _write_papers(self, todo: Sequence[tuple[Paper, str]], records: dict[str, dict[str, Any]],
                      report: IngestReport, bar) -> None:
        """Embed window i+1 while window i is written. Each window's missing chunks are embedded
        in one call, which sorts all of them by length (little padding); its chunks, then its
        paper records (the commit markers), are written in input order by a writer thread."""
        if not todo:
            return
        writer = _Writer(cast("PaperStore", self), records, report, bar)
        try:
            for window in self._windows(todo):
                writer.check()
                ids = [c.id for _, _, chunks in window for c in chunks]
                present = self._existing_ids(self.chunks, ids)
                new_chunks = [c for _, _, chunks in window for c in chunks if c.id not in present]
                emb = (self.ingest_embedder.embed([c.embed_text for c in new_chunks]) if new_chunks
                       else np.zeros((0, getattr(self.embedder, "dim", None) or 0), dtype=np.float32))
                writer.put((window, new_chunks, emb))
        finally:
            writer.close()  # writes what was handed over; re-raises the writer's error

    def _write_window(self, window, new_chunks: list[Chunk], emb: np.ndarray,
                      records: dict[str, dict[str, Any]], report: IngestReport) -> None:
        vectors: dict[str, np.ndarray] = {}
        if new_chunks:
            vectors.update(zip((c.id for c in new_chunks), emb))
            self._add_chunks(new_chunks, emb)
        report.chunks_embedded += len(new_chunks)
        reused = [c.id for _, _, chunks in window for c in chunks if c.id not in vectors]
        report.chunks_reused += len(reused)
        for part in _pages(reused, ID_PAGE):
            got = self.chunks.get(ids=part, include=["embeddings"])
            vectors.update(zip(got["ids"], np.asarray(got["embeddings"], dtype=np.float32)))
        rows = []
        for p, h, chunks in window:
            mean = np.mean([vectors[c.id] for c in chunks], axis=0)
            mean /= max(float(np.linalg.norm(mean)), 1e-12)
            rows.append((p, mean, self._paper_meta(p, h, chunks)))
        # Paper records go in after their chunks: a record is the commit marker of its paper.
        step = self._max_batch()
        for s in range(0, len(rows), step):
            part = rows[s:s + step]
            self.papers.upsert(ids=[p.id for p, _, _ in part], documents=[p.abstract for p, _, _ in part],
                               embeddings=[m.tolist() for _, m, _ in part], metadatas=[meta for _, _, meta in part])
        stale: list[str] = []
        for p, _, chunks in window:
            old = records.get(p.id)
            if old:
                keep = {c.id for c in chunks}
                stale.extend(cid for cid in old["chunk_ids"] if cid not in keep)
                report.updated.append(p.id)
            else:
                report.added.append(p.id)
        for part in _pages(stale, ID_PAGE):
            self.chunks.delete(ids=part)
        report.chunks_deleted += len(stale)
        self.lexicon.upsert((p.id, h, p.title, p.abstract) for p, h, _ in window)

    def _max_batch(self) -> int:
        return max(1, min(5000, self.client.get_max_batch_size()))

    def _add_chunks(self, chunks: list[Chunk], emb: np.ndarray) -> None:
        step = self._max_batch()
        for s in range(0, len(chunks), step):
            part = chunks[s:s + step]
            self.chunks.upsert(
                ids=[c.id for c in part], embeddings=emb[s:s + step].tolist(),
                documents=[c.text for c in part],
                metadatas=[{"paper_id": c.paper_id, "title": c.title, "index": c.index,
                            "n_chunks": c.n_chunks} for c in part])

    @staticmethod
    def _paper_meta(p: Paper, h: str, chunks: list[Chunk]) -> dict[str, Any]:
        meta: dict[str, Any] = {
            "title": p.title, "content_hash": h, "chunk_ids": json.dumps([c.id for c in chunks]),
            "n_chunks": len(chunks), "code_urls": json.dumps(list(p.code_urls)),
            "authors": json.dumps(list(p.authors)), "extra": json.dumps(p.metadata, default=str),
            "title_key": normalise_title(p.title), "abstract_key": abstract_key(p.abstract),
        }
        if p.url:
            meta["url"] = p.url
        if p.year is not None:
            meta["year"] = p.year
        return meta

    def _sweep_orphans(self) -> int:
        """Chunks their paper's record does not list, page by page (bounded memory)."""
        orphans: list[str] = []
        for got in self._pages_of(self.chunks, ["metadatas"]):
            metas = got["metadatas"]
            pids = list({(m or {}).get("paper_id") for m in metas} - {None})
            listed = {pid: set(rec["chunk_ids"]) for pid, rec in self._records(pids).items()}
            orphans.extend(cid for cid, m in zip(got["ids"], metas)
                           if cid not in listed.get((m or {}).get("paper_id"), ()))
        for part in _pages(orphans, ID_PAGE):
            self.chunks.delete(ids=part)
        return len(orphans)

    def delete_papers(self, paper_ids: Iterable[str], bump: bool = True, wait: bool = True,
                      on_wait: Callable[[str], None] | None = None) -> None:
        ids = list(paper_ids)
        if not ids:
            return
        with self.writing(wait=wait, on_wait=on_wait):
            self._lexicon_begin()
            total, before = self._collection_meta().get("chunks_total"), self.chunks.count()
            deleted = self._delete_locked(ids)
            if bump:  # the orphan check's count stays valid only if it was valid before
                self._bump_revision(chunks_total=total - deleted if total is not None and total == before else None)
            self._lexicon_end()

    def _delete_locked(self, ids: Sequence[str]) -> int:
        """Delete papers, their chunks and their lexicon rows; returns the chunks deleted."""
        before = self.chunks.count()
        for part in _pages(list(ids), ID_PAGE):
            self.chunks.delete(where={"paper_id": {"$in": list(part)}})
            self.papers.delete(ids=list(part))
        self.lexicon.remove(ids)
        return before - self.chunks.count()

    def _ensure_keys(self) -> None:
        """An index written before records carried title_key/abstract_key gets them once, so
        duplicates can be found by `where` lookups from then on."""
        if self._collection_meta().get("paper_keys"):
            return
        for got in self._pages_of(self.papers, ["metadatas", "documents"]):
            fix_ids, fix_metas = [], []
            for pid, m, doc in zip(got["ids"], got["metadatas"], got["documents"]):
                m = dict(m or {})
                if not m.get("title_key") or not m.get("abstract_key"):
                    m["title_key"] = normalise_title(m.get("title", ""))
                    m["abstract_key"] = abstract_key(doc or "")
                    fix_ids.append(pid)
                    fix_metas.append(m)
            if fix_ids:
                self.papers.update(ids=fix_ids, metadatas=fix_metas)
        self._set_meta(paper_keys=1)

class _Writer:
    """The thread that writes ingest windows to Chroma while the next one is embedded.
    At most one window waits for it, so memory stays bounded."""

    def __init__(self, store: PaperStore, records, report: IngestReport, bar):
        import queue

        self.store, self.records, self.report, self.bar = store, records, report, bar
        self.queue: queue.Queue = queue.Queue(maxsize=1)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="paper-rag-writer", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            item = self.queue.get()
            if item is None:
                return
            if self.error is not None:
                continue  # drain: nothing more is written after a failure
            window, new_chunks, emb = item
            try:
                self.store._write_window(window, new_chunks, emb, self.records, self.report)
                if self.bar is not None:
                    self.bar.update(len(window))
            except BaseException as exc:  # noqa: BLE001 - handed to the ingesting thread
                self.error = exc

    def check(self) -> None:
        if self.error is not None:
            raise self.error

    def put(self, item) -> None:
        import queue

        while self.thread.is_alive():
            try:
                self.queue.put(item, timeout=0.5)
                return
            except queue.Full:  # the writer is still busy: make sure it has not failed
                self.check()
        self.check()

    def close(self) -> None:
        if self.thread.is_alive():
            self.queue.put(None)
            self.thread.join()
        self.check()


def _pages(items: Sequence, size: int) -> Iterator[Sequence]:
    for s in range(0, len(items), size):
        yield items[s:s + size]
