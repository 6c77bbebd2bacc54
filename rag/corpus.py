"""Reading paper corpora: the bundled seed, JSONL, CSV and the seed's text format.

Loading never touches the index. It returns valid papers plus located errors, so a
bad file is rejected before anything already stored can be disturbed.
"""

from __future__ import annotations

import csv
import errno
import hashlib
import io
import json
import re
import stat
import unicodedata
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from .errors import CorpusError, CorpusErrors
from .types import Paper, paper_to_dict

MAX_TITLE_CHARS = 1_000
MAX_ABSTRACT_CHARS = 50_000
MAX_FILE_BYTES = 1024 ** 3  # a corpus file is read whole; 1 GB is ~700k abstracts
KNOWN_FIELDS = {"id", "title", "abstract", "url", "authors", "year", "code_urls"}
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
_URL_RE = re.compile(r"https?://[^\s<>\"'(){}\[\]]+")
_SEED_HEADER_RE = re.compile(r"^Get trending papers", re.I)


@dataclass
class LoadResult:
    papers: list[Paper] = field(default_factory=list)
    errors: list[CorpusError] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)

    def raise_for_errors(self) -> None:
        if len(self.errors) == 1:
            raise self.errors[0]
        if self.errors:
            raise CorpusErrors(self.errors)


def bundled_corpus_path() -> Path:
    return Path(str(resources.files("rag") / "data" / "corpus.jsonl"))


def load_bundled() -> list[Paper]:
    result = load_corpus([bundled_corpus_path()])
    result.raise_for_errors()
    return result.papers


def normalise_title(title: str) -> str:
    """Case, accents, spacing and punctuation do not make a different title (any script)."""
    text = unicodedata.normalize("NFKD", title).casefold()
    text = "".join(ch for ch in text if not unicodedata.combining(ch))
    return re.sub(r"[\W_]+", "", text)


def abstract_key(abstract: str) -> str:
    """Spacing and case do not make a different abstract."""
    return hashlib.sha1(" ".join(abstract.split()).lower().encode()).hexdigest()[:16]


def generated_id(title: str) -> str:
    """The id of a paper that has none: a readable slug plus a hash of the normalised title,
    so two titles sharing their first words never share an id, and the same title (in any
    case or punctuation) always gets the same one."""
    key = normalise_title(title)
    if not key:  # no letters or digits: the slug is already "paper-<hash of the title>"
        return slugify(title, 40)
    return f"{slugify(title, 40)}-{hashlib.sha1(key.encode()).hexdigest()[:8]}"


def slugify(title: str, max_len: int = 48) -> str:
    """The title as a slug, cut at a word boundary (the bundled corpus's ids: 48 characters)."""
    text = unicodedata.normalize("NFKD", title).encode("ascii", "ignore").decode()
    words = re.findall(r"[a-z0-9]+", text.lower())
    slug = ""
    for w in words:
        if slug and len(slug) + 1 + len(w) > max_len:
            break
        slug = f"{slug}-{w}" if slug else w[:max_len]
    return slug or "paper-" + hashlib.sha1(title.encode()).hexdigest()[:8]


def find_urls(text: str) -> tuple[str, ...]:
    return tuple(dict.fromkeys(u.rstrip(".,;:") for u in _URL_RE.findall(text)))


def load_corpus(paths: Iterable[str | Path], id_scheme: Literal["hashed", "slug"] = "hashed") -> LoadResult:
    """Load and validate several files as one corpus; duplicates are kept once.

    Explicit ids are the user's and are kept; generated ids are assigned afterwards so they
    step aside for explicit ones, wherever those appear. `id_scheme="slug"` generates the plain
    48-character slugs of the bundled corpus (used to rebuild it from its seed file with the
    same ids); the default adds a title hash (`generated_id`).
    """
    make_id = generated_id if id_scheme == "hashed" else slugify
    result = LoadResult()
    seen_titles: dict[str, str] = {}
    seen_content: dict[str, str] = {}
    accepted: list[tuple[Paper, bool]] = []  # (paper, has explicit id)
    explicit: dict[str, tuple[Path, int]] = {}
    for path in paths:
        path = Path(path)
        n_records, n_errors = 0, len(result.errors)
        for line, raw in _records(path, result.errors):
            n_records += 1
            paper = _to_paper(raw, path, line, result.errors, make_id)
            if paper is None:
                continue
            title_key = normalise_title(paper.title)
            content_key = abstract_key(paper.abstract)
            first = (seen_titles.get(title_key) if title_key else None) or seen_content.get(content_key)
            if first is not None:
                result.duplicates.append(f"{path.name}:{line}: '{paper.title[:60]}' duplicates {first}")
                continue
            has_id = raw.get("id") not in (None, "")
            if has_id and paper.id in explicit:
                where = explicit[paper.id]
                result.errors.append(CorpusError(f"id '{paper.id}' is already used at {where[0].name}:{where[1]}",
                                                 file=str(path), line=line, field="id"))
                continue
            if has_id:
                explicit[paper.id] = (path, line)
            if title_key:
                seen_titles[title_key] = paper.id
            seen_content[content_key] = paper.id
            accepted.append((paper, has_id))
        if n_records == 0 and len(result.errors) == n_errors:
            result.errors.append(CorpusError("no papers found in this file", file=str(path),
                                             hint="Check that this is the file you meant; `rag ingest` takes "
                                                  ".jsonl, .json, .csv, .tsv or seed .txt files."))
    used = set(explicit)
    for paper, has_id in accepted:
        if not has_id:
            pid, n = paper.id, 2
            while pid in used:
                pid, n = f"{paper.id}-{n}", n + 1
            used.add(pid)
            paper = paper if pid == paper.id else _replace_id(paper, pid)
        result.papers.append(paper)
    return result


def _replace_id(p: Paper, pid: str) -> Paper:
    return Paper(id=pid, title=p.title, abstract=p.abstract, url=p.url, code_urls=p.code_urls,
                 authors=p.authors, year=p.year, metadata=p.metadata)


_FILE_KINDS = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
               (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def _read_text(path: Path) -> str:
    """The file's text. What it is gets checked first (os.stat), so a FIFO or a device is
    refused before it could block or stream forever."""
    def fail(message: str, hint: str | None = None) -> CorpusError:
        return CorpusError(message, file=str(path), hint=hint)

    try:
        st = path.stat()
    except FileNotFoundError:
        broken = " (a symlink to a missing file)" if path.is_symlink() else ""
        raise fail(
            f"file not found{broken}", "Check the path; `rag ingest` takes .jsonl, .csv or .txt files."
        ) from None
    except OSError as exc:
        raise _os_error(path, exc) from None
    if stat.S_ISDIR(st.st_mode):
        raise fail("is a directory, expected a file",
                   f"Pass the files inside it, e.g. `rag ingest {path}/*.jsonl`.") from None
    if not stat.S_ISREG(st.st_mode):
        kind = next((name for test, name in _FILE_KINDS if test(st.st_mode)), "not a regular file")
        raise fail(f"is {kind}, not a regular file",
                   "Save the papers to a regular .jsonl, .csv or .txt file and ingest that.")
    if st.st_size > MAX_FILE_BYTES:
        raise fail(f"is {st.st_size / 1024 ** 3:.1f} GB; the limit is {MAX_FILE_BYTES / 1024 ** 3:.0f} GB",
                   "Split it into smaller files and ingest them one after another.")
    try:
        with path.open("rb") as fh:
            data = fh.read(MAX_FILE_BYTES + 1)  # a file that lies about its size is still capped
    except OSError as exc:
        raise _os_error(path, exc) from None
    if len(data) > MAX_FILE_BYTES:
        raise fail(f"is larger than the {MAX_FILE_BYTES / 1024 ** 3:.0f} GB limit",
                   "Split it into smaller files and ingest them one after another.")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise CorpusError(f"not valid UTF-8 (byte {exc.start})", file=str(path), line=line,
                          hint="Re-save the file as UTF-8, e.g. `iconv -f latin1 -t utf-8`.") from None


def _os_error(path: Path, exc: OSError) -> CorpusError:
    """An OSError from stat or read as one located line with a fix."""
    if exc.errno == errno.ELOOP:
        return CorpusError("is a symlink loop (the link points back at itself)", file=str(path),
                           hint="Point the link at the real file, or pass the real file's path.")
    if exc.errno in (errno.EACCES, errno.EPERM):
        return CorpusError("permission denied: the file cannot be read", file=str(path),
                           hint=f"Make it readable (`chmod u+r {path}`) or ingest a copy you can read.")
    if exc.errno == errno.ENAMETOOLONG:
        return CorpusError("the path is too long", file=str(path), hint="Use a shorter path.")
    reason = exc.strerror or type(exc).__name__
    return CorpusError(f"cannot be read ({reason})", file=str(path),
                       hint="Check that the file exists and is readable, then ingest it again.")


def _records(path: Path, errors: list[CorpusError]) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line number, raw record) for any supported format."""
    try:
        text = _read_text(path)
    except CorpusError as exc:
        errors.append(exc)
        return
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        yield from _jsonl_records(text, path, errors)
    elif suffix == ".json":
        yield from _json_records(text, path, errors)
    elif suffix in (".csv", ".tsv"):
        yield from _csv_records(text, path, errors, "\t" if suffix == ".tsv" else ",")
    elif suffix in (".txt", ""):
        yield from _seed_records(text, path, errors)
    else:
        errors.append(CorpusError(f"unsupported file type '{suffix}'", file=str(path),
                                  hint="Use .jsonl, .json, .csv, .tsv or the seed .txt format."))


def _jsonl_records(text: str, path: Path, errors: list[CorpusError]):
    # Only "\n" ends a JSONL record: U+2028 and friends are legal inside JSON strings.
    for n, line in enumerate(text.split("\n"), 1):
        line = line.rstrip("\r")
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            errors.append(CorpusError(f"invalid JSON ({exc.msg}, column {exc.colno})",
                                      file=str(path), line=n))
            continue
        except RecursionError:
            errors.append(CorpusError("JSON nested too deeply", file=str(path), line=n))
            continue
        if not isinstance(obj, dict):
            errors.append(CorpusError("expected a JSON object with 'title' and 'abstract'",
                                      file=str(path), line=n))
            continue
        yield n, obj


def _json_records(text: str, path: Path, errors: list[CorpusError]):
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        errors.append(CorpusError(f"invalid JSON ({exc.msg})", file=str(path), line=exc.lineno))
        return
    except RecursionError:
        errors.append(CorpusError("JSON nested too deeply", file=str(path)))
        return
    if isinstance(data, dict):
        data = data.get("papers", [data])
    if not isinstance(data, list):
        errors.append(CorpusError("expected a list of paper objects", file=str(path)))
        return
    for i, obj in enumerate(data, 1):
        if isinstance(obj, dict):
            yield i, obj
        else:
            errors.append(CorpusError(f"item {i} is not an object", file=str(path), line=i))


def _csv_records(text: str, path: Path, errors: list[CorpusError], delimiter: str):
    # Fields may be long (the abstract limit is checked per record, with its line number).
    csv.field_size_limit(max(csv.field_size_limit(), 16 * MAX_ABSTRACT_CHARS))
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        header = reader.fieldnames or []
        missing = [c for c in ("title", "abstract") if c not in header]
        if missing:
            errors.append(CorpusError(f"missing column(s) {', '.join(missing)} in the header "
                                      f"(found: {', '.join(header) or 'nothing'})",
                                      file=str(path), line=1, field=missing[0]))
            return
        for row in reader:
            if None in row:
                errors.append(CorpusError("more values than columns", file=str(path), line=reader.line_num))
                continue
            yield reader.line_num, {k: v for k, v in row.items() if v not in (None, "")}
    except csv.Error as exc:
        errors.append(CorpusError(f"malformed CSV ({exc}); the rest of the file was not read",
                                  file=str(path), line=reader.line_num or None))


def _seed_records(text: str, path: Path, errors: list[CorpusError]):
    """Title line / abstract line pairs, as in the trending-papers page dump."""
    lines = [(n, ln.strip()) for n, ln in enumerate(text.splitlines(), 1)]
    lines = [(n, ln) for n, ln in lines if ln]
    while lines and _SEED_HEADER_RE.match(lines[0][1]):
        lines.pop(0)
    if lines and lines[0][1].startswith("Subscribe") and len(lines[0][1]) > len("Subscribe"):
        lines[0] = (lines[0][0], lines[0][1][len("Subscribe"):].strip())
    for i in range(0, len(lines), 2):
        n, title = lines[i]
        if i + 1 >= len(lines):
            errors.append(CorpusError("title has no abstract line after it", file=str(path),
                                      line=n, field="abstract"))
            break
        yield n, {"title": title, "abstract": lines[i + 1][1]}


def _to_paper(raw: dict[str, Any], path: Path, line: int, errors: list[CorpusError],
              make_id: Callable[[str], str] = generated_id) -> Paper | None:
    def bad(msg: str, fld: str) -> Paper | None:  # records the problem; the paper is skipped
        errors.append(CorpusError(msg, file=str(path), line=line, field=fld))
        return None

    title, abstract = raw.get("title"), raw.get("abstract")
    if not isinstance(title, str) or not title.strip():
        return bad("missing or empty title", "title")
    if not isinstance(abstract, str) or not abstract.strip():
        return bad("missing or empty abstract", "abstract")
    title, abstract = " ".join(title.split()), " ".join(abstract.split())
    if len(title) > MAX_TITLE_CHARS:
        return bad(f"title is {len(title)} characters (limit {MAX_TITLE_CHARS})", "title")
    if len(abstract) > MAX_ABSTRACT_CHARS:
        return bad(f"abstract is {len(abstract)} characters (limit {MAX_ABSTRACT_CHARS})", "abstract")
    if _control_chars(title + abstract):
        return bad("contains control characters", "abstract" if _control_chars(abstract) else "title")
    for name, value in (("title", title), ("abstract", abstract)):
        if any(0xD800 <= ord(ch) <= 0xDFFF for ch in value):
            return bad("contains an unpaired surrogate (broken \\uD8xx escape)", name)
    pid = raw.get("id")
    if pid in ("",):
        pid = None
    if pid is not None:
        pid = str(pid).strip()
        if not _ID_RE.match(pid):
            return bad(f"id '{pid[:40]}' must be 1-128 letters, digits or . _ : -", "id")
    year = raw.get("year")
    if year not in (None, ""):
        try:
            as_float = float(str(year).strip())
            if not as_float.is_integer():
                raise ValueError
            year = int(as_float)
        except (ValueError, OverflowError):
            return bad(f"year '{year}' is not a whole number", "year")
    else:
        year = None
    authors = raw.get("authors") or []
    if isinstance(authors, str):
        authors = tuple(a.strip() for a in re.split(r";|\band\b|,", authors) if a.strip())
    elif isinstance(authors, list):
        authors = tuple(str(a) for a in authors)
    else:
        return bad("authors must be a list or a string", "authors")
    url = raw.get("url")
    if url is not None and not isinstance(url, str):
        return bad("url must be a string", "url")
    extra = {k: v for k, v in raw.items() if k not in KNOWN_FIELDS}
    return Paper(id=pid or make_id(title), title=title, abstract=abstract, url=url or None,
                 code_urls=find_urls(abstract), authors=authors, year=year, metadata=extra)


def _control_chars(text: str) -> bool:
    return any(unicodedata.category(ch) == "Cc" for ch in text)


def write_jsonl(papers: Iterable[Paper], path: str | Path) -> int:
    path = Path(path)
    count = 0
    with path.open("w", encoding="utf-8") as fh:
        for p in papers:
            fh.write(json.dumps(paper_to_dict(p), ensure_ascii=False) + "\n")
            count += 1
    return count


def main(argv: list[str] | None = None) -> None:
    """`python -m rag.corpus SEED OUT`: convert the seed file into the bundled JSONL."""
    import sys

    args = argv if argv is not None else sys.argv[1:]
    result = load_corpus([args[0]], id_scheme="slug")  # the bundled ids, which eval/*.jsonl refer to
    result.raise_for_errors()
    print(f"wrote {write_jsonl(result.papers, args[1])} papers to {args[1]}")


if __name__ == "__main__":
    main()
