"""Bad inputs through the real `rag` command, as a hostile new user would try them.

Every case runs `python -m rag.cli ...` in a subprocess (with its own copy of an index of
the bundled corpus where it needs one) and is classified as one of

  hang       did not finish within its time limit
  traceback  printed a Python traceback
  lost       papers indexed before it are gone, changed, or can no longer be read back
  miscite    the answer cites a paper it does not quote
  wrong      finished, but not as it should (exit 0 where an error was due, a silent default,
             an error where success was due, a missing message)
  error      a clear error: non-zero exit, an `error:` line, no traceback
  ok         handled well

The goal is 0 hang, traceback, lost and miscite. The code under test is whatever
`import rag` finds, so an older commit can be measured too:

    git archive OLD | tar -x -C /tmp/old && PYTHONPATH=/tmp/old .venv/bin/python scripts/hostile_inputs.py

usage: hostile_inputs.py [--only SUBSTRING] [--skip-slow] [--json OUT] [--work DIR]
The index inspection below reads Chroma directly, so it does not depend on the code under test.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
FACENET_Q = "What accuracy does FaceNet reach on LFW?"
FACENET_ID = "facenet-a-unified-embedding-for-face-recognition"
FACENET_TITLE = "FaceNet: A Unified Embedding for Face Recognition and Clustering"  # the bundled title
# The example: another title whose 48-character slug is the bundled FaceNet's id.
FACENET_LOOKALIKE = "FaceNet: A Unified Embedding for Face Recognition and Verification at Web Scale"
BAD = ("hang", "traceback", "lost", "miscite", "wrong")


@dataclass
class Run:
    rc: int | None
    out: str
    err: str
    hung: bool
    seconds: float

    @property
    def text(self) -> str:
        return self.out + "\n" + self.err


@dataclass
class Outcome:
    kind: str
    detail: str = ""


@dataclass
class Case:
    name: str
    group: str
    fn: Callable[["Ctx"], Outcome]
    slow: bool = False


CASES: list[Case] = []


def case(group: str, name: str, slow: bool = False):
    def deco(fn):
        CASES.append(Case(name, group, fn, slow))
        return fn
    return deco


def base_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAG_", "OPENAI_"))}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def _limit_memory(mb: int):
    def apply() -> None:  # in the child: a runaway read fails with MemoryError instead of eating the machine
        import resource

        resource.setrlimit(resource.RLIMIT_DATA, (mb * 1024 * 1024, mb * 1024 * 1024))
    return apply


def rag(args: list[str], data: Path | str | None, timeout: float = 180, env: dict[str, str] | None = None,
        cwd: Path | None = None, unset_data_dir: bool = False, memory_mb: int = 3000) -> Run:
    full = base_env(**(env or {}))
    if data is not None and not unset_data_dir and "RAG_DATA_DIR" not in (env or {}):
        full["RAG_DATA_DIR"] = str(data)
    t0 = time.perf_counter()
    proc = subprocess.Popen([PY, "-m", "rag.cli", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, text=True, env=full, cwd=cwd, start_new_session=True,
                            preexec_fn=_limit_memory(memory_mb))
    try:
        out, err = proc.communicate(timeout=timeout)
        return Run(proc.returncode, out, err, False, time.perf_counter() - t0)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        return Run(None, out, err, True, time.perf_counter() - t0)


_INSPECT = r"""
import json, sys
import chromadb
from chromadb.config import Settings
path = sys.argv[1]
out = {"papers": {}, "broken": None, "missing_chunks": 0, "orphans": 0}
try:
    c = chromadb.PersistentClient(path=path, settings=Settings(anonymized_telemetry=False))
    papers = c.get_collection("papers_papers")
    chunks = c.get_collection("papers_chunks")
    got = papers.get(include=["metadatas"])
    referenced = set()
    for pid, m in zip(got["ids"], got["metadatas"]):
        ids = json.loads(m.get("chunk_ids", "[]"))
        referenced.update(ids)
        out["papers"][pid] = m.get("title")
    have = chunks.get(include=[])["ids"]
    out["missing_chunks"] = len(referenced - set(have))
    out["orphans"] = len(set(have) - referenced)
    # every chunk's vector must be readable and find itself (what a broken hnsw segment fails)
    ids = sorted(referenced & set(have))
    misses = 0
    for s in range(0, len(ids), 200):
        part = chunks.get(ids=ids[s:s + 200], include=["embeddings"])
        res = chunks.query(query_embeddings=[list(map(float, e)) for e in part["embeddings"]], n_results=1,
                           include=["distances"])
        misses += sum(1 for want, hit in zip(part["ids"], res["ids"]) if hit[:1] != [want])
    out["self_query_misses"] = misses
except Exception as exc:
    out["broken"] = f"{type(exc).__name__}: {str(exc)[:200]}"
print(json.dumps(out))
"""


def inspect(data: Path) -> dict:
    """The index as Chroma holds it: papers (id -> title), missing/orphan chunks, readability."""
    chroma = data / "chroma"
    if not (chroma / "chroma.sqlite3").exists():
        return {"papers": {}, "broken": "no index", "missing_chunks": 0, "orphans": 0}
    scratch = Path(tempfile.mkdtemp(prefix="inspect-"))
    try:  # a copy, so inspecting never writes to (or locks) the index under test
        shutil.copytree(chroma, scratch / "chroma")
        out = subprocess.run([PY, "-c", _INSPECT, str(scratch / "chroma")], capture_output=True, text=True,
                             timeout=600)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    try:
        return json.loads(out.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        return {"papers": {}, "broken": out.stderr[-300:], "missing_chunks": 0, "orphans": 0}


def lost(before: dict, after: dict, allow_changed: set[str] = frozenset()) -> str | None:
    """What was indexed before and is gone, changed or unreadable now (None = nothing)."""
    if after.get("broken"):
        return f"index unreadable: {after['broken']}"
    gone = [p for p in before["papers"] if p not in after["papers"]]
    changed = [p for p, t in before["papers"].items()
               if p in after["papers"] and after["papers"][p] != t and p not in allow_changed]
    problems = []
    if gone:
        problems.append(f"{len(gone)} paper(s) gone (e.g. {gone[0]})")
    if changed:
        problems.append(f"{len(changed)} paper(s) replaced by another title (e.g. {changed[0]})")
    if after.get("missing_chunks"):
        problems.append(f"{after['missing_chunks']} chunk(s) listed but missing")
    # Not counted: chunks that a top-1 query with their own vector misses. Chroma's HNSW does
    # that for a few chunks in a thousand after large ingests, sequential ones too (measured:
    # 3 of 4,600 after two sequential 2,000-paper ingests); the vectors are all readable above.
    return "; ".join(problems) or None


def judge(run: Run, expect: str, check: Callable[[Run], str | None] | None = None) -> Outcome:
    """expect: 'error' (a clear error is right) or 'ok' (must succeed)."""
    if run.hung:
        return Outcome("hang", f"no exit after {run.seconds:.0f}s")
    if "Traceback" in run.text:
        last = [ln for ln in run.text.strip().splitlines() if ln.strip()][-1:]
        return Outcome("traceback", last[0][:160] if last else "")
    problem = check(run) if check else None
    if problem:
        return Outcome("wrong", problem)
    if expect == "error":
        if run.rc == 0:
            return Outcome("wrong", "exit 0 where an error was due: " + run.text.strip()[-160:].replace("\n", " | "))
        if "error" not in run.err.lower():
            return Outcome("wrong", f"exit {run.rc} without an error line: {run.err.strip()[-160:]}")
        first = next((ln for ln in run.err.splitlines() if "error" in ln.lower()), "")
        return Outcome("error", first[:160])
    if run.rc != 0:
        return Outcome("wrong", f"exit {run.rc}: {run.err.strip()[-200:]}".replace("\n", " | "))
    return Outcome("ok")


def cited_ok(run: Run) -> str | None:
    """Extractive answers name every paper they cite ("Title" [n]); a marker without its
    paper's quote is a mis-citation."""
    try:
        data = json.loads(run.out)
    except ValueError:
        return None
    by_n = {r["rank"]: r for r in data.get("retrieved", [])}
    for c in data.get("citations", []):
        title = by_n.get(c["n"], {}).get("title", "")
        quoted = any(s and s in data["answer"] for s in (c.get("snippet", "")[:40],))
        if title.split("[")[0].strip()[:30] not in data["answer"] and not quoted:
            return f"cites [{c['n']}] '{title[:50]}' without quoting it"
    return None


# --- synthetic corpora ---------------------------------------------------------------------

_SYL = ["ka", "zo", "ri", "mu", "te", "vo", "la", "shi", "pen", "dra", "qui", "lo", "bex", "nor", "fia", "gul",
        "tam", "wes", "yor", "ump"]
_TASKS = ["face parsing", "gait recognition", "crowd counting", "pose transfer", "iris matching",
          "lip reading", "age estimation", "hand tracking"]


def synthetic(n: int, tag: str, seed: int) -> list[dict]:
    """n short, distinct papers (no ids): two made-up words name each method."""
    rng = random.Random(seed)
    seen: set[str] = set()
    out = []
    while len(out) < n:
        a = "".join(rng.choice(_SYL) for _ in range(3))
        b = "".join(rng.choice(_SYL) for _ in range(3))
        if a in seen or b in seen:
            continue
        seen.update((a, b))
        i = len(out)
        task = rng.choice(_TASKS)
        out.append({"title": f"{a.capitalize()} {b.capitalize()} {tag}{i} for {task}",
                    "abstract": f"We present {a} {b}, a small model for {task}. "
                                f"It scores {rng.randint(50, 99)}.{rng.randint(0, 9)} on {tag}-bench {i}."})
    return out


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


# --- context -------------------------------------------------------------------------------

class Ctx:
    def __init__(self, work: Path):
        self.work = work
        self.template = work / "template"
        self.n = 0

    def build_template(self) -> None:
        if (self.template / "chroma" / "chroma.sqlite3").exists():
            return
        run = rag(["ingest"], self.template, timeout=900)
        if run.rc != 0:
            raise SystemExit(f"could not build the template index:\n{run.err}")

    def fresh(self, name: str) -> Path:
        self.n += 1
        dest = self.work / "cases" / f"{self.n:03d}-{name}"
        shutil.rmtree(dest, ignore_errors=True)
        shutil.copytree(self.template, dest)
        return dest

    def scratch(self, name: str) -> Path:
        self.n += 1
        d = self.work / "cases" / f"{self.n:03d}-{name}"
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
        return d

    def shared(self) -> Path:
        """A read-mostly copy for cases that must not write (settings and flags)."""
        d = self.work / "shared-index"
        if not d.exists():
            shutil.copytree(self.template, d)
        return d


# --- settings and flags (each should be one clear error) ----------------------------------

def _setting_case(var: str, value: str, cmd: str = "ask"):
    def fn(ctx: Ctx) -> Outcome:
        args = ["ask", FACENET_Q] if cmd == "ask" else ["serve"] if cmd == "serve" else ["ingest"]
        data = ctx.shared()
        run = rag(args, data, env={var: value}, cwd=ctx.scratch("cwd"), timeout=60)

        def names_it(r: Run) -> str | None:
            return None if r.rc == 0 or var in r.err else f"the error does not name {var}: {r.err.strip()[-160:]}"
        return judge(run, "error", names_it)
    return fn


for _var, _val, _cmd in [
    ("RAG_K", "abc", "ask"), ("RAG_K", "0", "ask"), ("RAG_K", "-1", "ask"), ("RAG_K", "100000", "ask"),
    ("RAG_MODE", "bogus", "ask"), ("RAG_EMBEDDINGS", "bogus", "ask"), ("RAG_FETCH_K", "1", "ask"),
    ("RAG_TEMPERATURE", "hot", "ask"), ("RAG_MIN_RELEVANCE", "2", "ask"), ("RAG_CHUNK_TOKENS", "5", "ask"),
    ("RAG_MAX_RETRIES", "-3", "ask"), ("RAG_MAX_QUESTION_CHARS", "0", "ask"),
    ("RAG_EMBEDDING_BATCH_SIZE", "0", "ask"), ("RAG_REQUEST_TIMEOUT", "0", "ask"),
    ("RAG_LOCAL_CTX", "10", "ask"), ("RAG_MAX_UPLOAD_MB", "0", "serve"), ("RAG_UI_PORT", "99999", "serve"),
    ("RAG_UI_PORT", "abc", "serve"), ("RAG_COLLECTION", "bad name!", "ask"), ("RAG_CHROMA_URL", "ftp://nowhere", "ask"),
    ("RAG_MMR_LAMBDA", "1.5", "ask"), ("RAG_LLM_MAX_TOKENS", "many", "ask"),
]:
    case("settings", f"{_var}={_val} {_cmd}")(_setting_case(_var, _val, _cmd))


@case("settings", "RAG_DATA_DIR='' (empty)")
def _(ctx):
    cwd = ctx.scratch("empty-data-dir")
    run = rag(["ask", FACENET_Q], None, env={"RAG_DATA_DIR": ""}, cwd=cwd, timeout=300)

    def no_index_in_cwd(r: Run) -> str | None:
        return "built an index in the current directory" if (cwd / "chroma").exists() else None
    return judge(run, "error", no_index_in_cwd)


@case("settings", "RAG_TIKTOKEN_ENCODING=nope ingest")
def _(ctx):
    data = ctx.fresh("tiktoken")
    f = write_jsonl(ctx.scratch("tt") / "one.jsonl", synthetic(1, "TT", 1))
    return judge(rag(["ingest", str(f)], data, env={"RAG_TIKTOKEN_ENCODING": "nope"}), "error")


@case("settings", "RAG_CHROMA_URL unreachable")
def _(ctx):
    return judge(rag(["ask", FACENET_Q], ctx.shared(), env={"RAG_CHROMA_URL": "http://127.0.0.1:9"}), "error")


def _flag_case(args: list[str], expect_in_err: str | None = None):
    def fn(ctx: Ctx) -> Outcome:
        run = rag(args, ctx.shared(), timeout=60, cwd=ctx.scratch("cwd"))

        def named(r: Run) -> str | None:
            if expect_in_err and r.rc != 0 and expect_in_err not in r.err:
                return f"the error does not name {expect_in_err}: {r.err.strip()[-160:]}"
            return None
        return judge(run, "error", named)
    return fn


for _args, _name in [
    (["ask", "--k", "-1", FACENET_Q], "--k"), (["ask", "--k", "0", FACENET_Q], "--k"),
    (["ask", "--k", "100000", FACENET_Q], "--k"), (["ask", "--k", "abc", FACENET_Q], "--k"),
    (["ask", "--mode", "bogus", FACENET_Q], "--mode"), (["serve", "--port", "99999"], "--port"),
    (["serve", "--port", "-1"], "--port"), (["serve", "--port", "abc"], "--port"),
    (["eval", "--limit", "-1"], "--limit"), (["eval", "--concurrency", "0"], "--concurrency"),
    (["eval", "--k", "0"], "--k"), (["--data-dir", "", "ask", FACENET_Q], "--data-dir"),
]:
    case("flags", " ".join(a if a != FACENET_Q else "Q" for a in _args))(_flag_case(_args, _name))


@case("flags", "serve --port <busy>")
def _(ctx):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        run = rag(["serve", "--port", str(port)], ctx.shared(), timeout=90)

    def names_port(r: Run) -> str | None:
        return None if r.rc == 0 or str(port) in r.err else f"the error does not name port {port}"
    return judge(run, "error", names_port)


@case("flags", "serve --host 256.1.1.1")
def _(ctx):
    return judge(rag(["serve", "--host", "256.1.1.1", "--port", "0"], ctx.shared(), timeout=90), "error")


@case("flags", "--data-dir <a file>")
def _(ctx):
    f = ctx.scratch("dd-file") / "not-a-dir"
    f.write_text("x")
    return judge(rag(["--data-dir", str(f), "ask", FACENET_Q], None, unset_data_dir=True), "error",
                 _no_destructive_hint)


@case("flags", "RAG_DATA_DIR=<a file>")
def _(ctx):
    f = ctx.scratch("dd-file2") / "not-a-dir"
    f.write_text("x")
    return judge(rag(["ask", FACENET_Q], f), "error", _no_destructive_hint)


@case("flags", "RAG_DATA_DIR=/proc/... (cannot be created)")
def _(ctx):
    return judge(rag(["ask", FACENET_Q], Path("/proc/paper-rag-test")), "error", _no_destructive_hint)


@case("flags", "ask --paper no-such-id")
def _(ctx):
    run = rag(["ask", "--paper", "no-such-id", FACENET_Q], ctx.shared())
    return judge(run, "error" if run.rc else "ok")


def _no_destructive_hint(run: Run) -> str | None:
    if "Remove that folder" in run.err or "rm -r" in run.err:
        return "the hint says to remove the folder: " + run.err.strip()[-160:]
    return None


# --- corpus files ----------------------------------------------------------------------------

def _ingest_case(make: Callable[[Path], Path | str], expect: str = "error", timeout: float = 60,
                 check: Callable[[Run], str | None] | None = None):
    def fn(ctx: Ctx) -> Outcome:
        data = ctx.fresh("ingest")
        before = inspect(data)
        target = make(ctx.scratch("files"))
        run = rag(["ingest", str(target)], data, timeout=timeout)
        out = judge(run, expect, check)
        if out.kind in ("hang", "traceback"):
            return out
        problem = lost(before, inspect(data))
        return Outcome("lost", problem) if problem else out
    return fn


def _fifo(d: Path) -> Path:
    p = d / "papers.jsonl"
    os.mkfifo(p)
    return p


def _loop(d: Path) -> Path:
    a, b = d / "a.jsonl", d / "b.jsonl"
    a.symlink_to(b)
    b.symlink_to(a)
    return a


def _unreadable(d: Path) -> Path | str:
    p = d / "secret.jsonl"
    p.write_text(json.dumps({"title": "Secret", "abstract": "Hidden."}) + "\n")
    p.chmod(0)
    if os.geteuid() == 0:  # chmod 000 does not stop root; a write-only proc file does
        return "/proc/sys/vm/compact_memory"
    return p


def _socket(d: Path) -> Path:
    p = d / "sock.jsonl"
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(p))
    _KEEP.append(s)
    return p


_KEEP: list = []


def _sparse(d: Path) -> Path:
    p = d / "huge.jsonl"
    with p.open("wb") as fh:
        fh.truncate(3 * 1024 ** 3)
    return p


def _text(name: str, content: str | bytes):
    def make(d: Path) -> Path:
        p = d / name
        (p.write_bytes if isinstance(content, bytes) else lambda c: p.write_text(c, encoding="utf-8"))(content)
        return p
    return make


for _name, _make, _expect, _timeout in [
    ("a FIFO", _fifo, "error", 20), ("/dev/zero", lambda d: "/dev/zero", "error", 60),
    ("/dev/null", lambda d: "/dev/null", "error", 60), ("a symlink loop", _loop, "error", 60),
    ("an unreadable file", _unreadable, "error", 60), ("a directory", lambda d: d, "error", 60),
    ("a missing file", lambda d: d / "nope.jsonl", "error", 60), ("a unix socket", _socket, "error", 60),
    ("a 3 GB sparse file", _sparse, "error", 60),
    ("random bytes as .jsonl", _text("junk.jsonl", bytes(random.Random(1).randrange(256) for _ in range(4096))), "error", 60),
    ("an empty .jsonl", _text("empty.jsonl", ""), "error", 60),
    ("a .pdf", _text("paper.pdf", b"%PDF-1.4 garbage"), "error", 60),
    ("latin-1 CSV", _text("latin.csv", "title,abstract\nCaf\xe9 nets,Caf\xe9 abstract.\n".encode("latin-1")), "error", 60),
    ("CSV without abstract column", _text("cols.csv", "title,summary\nA,B\n"), "error", 60),
    ("deeply nested JSON", _text("deep.json", "[" * 100000 + "]" * 100000), "error", 60),
    ("a 100k-character abstract", _text("long.jsonl", json.dumps({"title": "Long", "abstract": "word " * 20000}) + "\n"), "error", 60),
    ("JSONL of arrays", _text("arr.jsonl", "[1, 2]\n[3]\n"), "error", 60),
    ("NUL bytes in a title", _text("nul.jsonl", json.dumps({"title": "A\u0000B", "abstract": "C."}) + "\n"), "error", 60),
]:
    case("files", f"ingest {_name}")(_ingest_case(_make, _expect, _timeout))


# --- ids, duplicates, conflicts --------------------------------------------------------------

def _ask_json(data: Path, q: str, *extra: str) -> dict | None:
    run = rag(["ask", "--json", *extra, q], data)
    try:
        return json.loads(run.out)
    except ValueError:
        return None


@case("ids", "a paper whose title slug is the bundled FaceNet's id, without an id")
def _(ctx):
    data = ctx.fresh("facenet")
    before = inspect(data)
    f = write_jsonl(ctx.scratch("f") / "facenet.jsonl",
                    [{"title": FACENET_LOOKALIKE, "abstract": "We present a face recognition system. It is new."}])
    run = rag(["ingest", str(f)], data)
    out = judge(run, "ok" if run.rc == 0 else "error")
    if out.kind in ("hang", "traceback"):
        return out
    problem = lost(before, inspect(data))
    ans = _ask_json(data, FACENET_Q)
    if problem:
        return Outcome("lost", problem)
    if not ans or ans.get("abstained") or FACENET_ID not in [c["paper_id"] for c in ans.get("citations", [])]:
        return Outcome("lost", "the FaceNet question no longer cites the bundled FaceNet paper")
    if "1 added" not in run.out:
        return Outcome("wrong", "the new paper was not added: " + run.out.strip()[:120])
    return out


@case("ids", "an exact copy of a bundled paper without its id")
def _(ctx):
    data = ctx.fresh("copy")
    before = inspect(data)
    row = json.loads((ROOT / "rag" / "data" / "corpus.jsonl").read_text(encoding="utf-8").splitlines()[5])
    row.pop("id")
    f = write_jsonl(ctx.scratch("f") / "copy.jsonl", [row])
    run = rag(["ingest", str(f)], data)
    after = inspect(data)
    out = judge(run, "ok")
    if out.kind in ("hang", "traceback"):
        return out
    if (problem := lost(before, after)):
        return Outcome("lost", problem)
    if len(after["papers"]) != len(before["papers"]):
        return Outcome("wrong", f"stored twice ({len(before['papers'])} -> {len(after['papers'])} papers)")
    return out


@case("ids", "two CSVs numbering their ids from 1")
def _(ctx):
    data = ctx.fresh("csv-ids")
    d = ctx.scratch("f")
    a, b = d / "a.csv", d / "b.csv"
    a.write_text("id,title,abstract\n1,Quokka Gaits,We study quokka gaits.\n2,Wombat Burrows,We map wombat burrows.\n")
    b.write_text("id,title,abstract\n1,Echidna Spines,We count echidna spines.\n3,Platypus Bills,We model platypus bills.\n")
    rag(["ingest", str(a)], data)
    before = inspect(data)
    run = rag(["ingest", str(b)], data)
    out = judge(run, "error")
    if out.kind in ("hang", "traceback"):
        return out
    after = inspect(data)
    if (problem := lost(before, after)):
        return Outcome("lost", problem)
    if "conflict" not in run.text.lower():
        return Outcome("wrong", "no conflict reported")
    if len(after["papers"]) != len(before["papers"]) + 1:
        return Outcome("wrong", "the non-conflicting paper of the second file was not added")
    return out


@case("ids", "an explicit id of a bundled paper with another title")
def _(ctx):
    data = ctx.fresh("explicit")
    before = inspect(data)
    f = write_jsonl(ctx.scratch("f") / "x.jsonl", [{"id": FACENET_ID, "title": "Quokka Face Maps",
                                                      "abstract": "We map quokka faces."}])
    run = rag(["ingest", str(f)], data)
    out = judge(run, "error")
    if out.kind in ("hang", "traceback"):
        return out
    if (problem := lost(before, inspect(data))):
        return Outcome("lost", problem)
    return out


@case("ids", "the same with --replace")
def _(ctx):
    data = ctx.fresh("replace")
    before = inspect(data)
    f = write_jsonl(ctx.scratch("f") / "x.jsonl", [{"id": FACENET_ID, "title": "Quokka Face Maps",
                                                      "abstract": "We map quokka faces."}])
    run = rag(["ingest", "--replace", str(f)], data)
    out = judge(run, "ok")
    if out.kind in ("hang", "traceback", "wrong"):
        return out
    after = inspect(data)
    if (problem := lost(before, after, allow_changed={FACENET_ID})):
        return Outcome("lost", problem)
    if after["papers"].get(FACENET_ID) != "Quokka Face Maps":
        return Outcome("wrong", "--replace did not replace")
    return out


@case("ids", "a bundled title in other case and punctuation")
def _(ctx):
    data = ctx.fresh("case")
    before = inspect(data)
    f = write_jsonl(ctx.scratch("f") / "x.jsonl", [{"title": FACENET_TITLE.upper().replace(":", " -"),
                                                      "abstract": "Another abstract about faces."}])
    run = rag(["ingest", str(f)], data)
    after = inspect(data)
    out = judge(run, "ok")
    if out.kind in ("hang", "traceback"):
        return out
    if (problem := lost(before, after)):
        return Outcome("lost", problem)
    if len(after["papers"]) != len(before["papers"]):
        return Outcome("wrong", "a duplicate title was stored again")
    return out


@case("ids", "a bundled abstract under another title")
def _(ctx):
    data = ctx.fresh("abs")
    before = inspect(data)
    row = json.loads((ROOT / "rag" / "data" / "corpus.jsonl").read_text(encoding="utf-8").splitlines()[7])
    f = write_jsonl(ctx.scratch("f") / "x.jsonl", [{"title": "Totally New Title", "abstract": row["abstract"]}])
    run = rag(["ingest", str(f)], data)
    after = inspect(data)
    out = judge(run, "ok")
    if out.kind in ("hang", "traceback"):
        return out
    if (problem := lost(before, after)):
        return Outcome("lost", problem)
    if len(after["papers"]) != len(before["papers"]):
        return Outcome("wrong", "a duplicate abstract was stored again")
    return out


@case("ids", "a corrected abstract of an id-less paper")
def _(ctx):
    data = ctx.fresh("correct")
    d = ctx.scratch("f")
    v1 = write_jsonl(d / "v1.jsonl", [{"title": "Quokka Gait Analysis", "abstract": "We study quokka gaits."}])
    v2 = write_jsonl(d / "v2.jsonl", [{"title": "Quokka Gait Analysis", "abstract": "We study quokka gaits at 30 fps."}])
    rag(["ingest", str(v1)], data)
    before = inspect(data)
    run = rag(["ingest", str(v2)], data)
    after = inspect(data)
    out = judge(run, "ok", lambda r: None if "1 updated" in r.out else "not reported as 1 updated")
    if out.kind in ("hang", "traceback"):
        return out
    if (problem := lost(before, after)):
        return Outcome("lost", problem)
    return out


@case("ids", "two long titles sharing their first 60 characters")
def _(ctx):
    data = ctx.fresh("longtitles")
    head = "A Very Long Shared Title Prefix About Quokka Face Recognition Systems"
    d = ctx.scratch("f")
    a = write_jsonl(d / "a.jsonl", [{"title": head + " Part One", "abstract": "We study part one of quokkas."}])
    b = write_jsonl(d / "b.jsonl", [{"title": head + " Part Two", "abstract": "We study part two of wombats."}])
    rag(["ingest", str(a)], data)
    before = inspect(data)
    run = rag(["ingest", str(b)], data)
    after = inspect(data)
    out = judge(run, "ok")
    if out.kind in ("hang", "traceback"):
        return out
    if (problem := lost(before, after)):
        return Outcome("lost", problem)
    if len(after["papers"]) != len(before["papers"]) + 1:
        return Outcome("wrong", "the second paper was not added")
    return out


# --- damaged indexes and caches ----------------------------------------------------------------

def _damage_case(damage: Callable[[Path], None], args: list[str] | None = None, expect: str = "error",
                 check: Callable[[Run], str | None] | None = None):
    def fn(ctx: Ctx) -> Outcome:
        data = ctx.fresh("damage")
        damage(data)
        run = rag(args or ["ask", "--json", FACENET_Q], data)
        out = judge(run, expect, check or _no_destructive_hint)
        if out.kind in ("hang", "traceback"):
            return out
        if expect == "error" and run.rc == 0:
            return Outcome("lost", "answered from an index it rebuilt silently over the damaged one")
        return out
    return fn


def _truncate(data: Path) -> None:
    (data / "chroma" / "chroma.sqlite3").write_bytes(b"")


def _garbage(data: Path) -> None:
    (data / "chroma" / "chroma.sqlite3").write_bytes(b"garbage " * 1000)


def _no_chroma(data: Path) -> None:
    shutil.rmtree(data / "chroma")


def _garbage_file(rel: str, content: bytes = b"garbage " * 500):
    def damage(data: Path) -> None:
        p = data / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        for side in (p.with_name(p.name + "-wal"), p.with_name(p.name + "-shm")):
            side.unlink(missing_ok=True)
        p.write_bytes(content)
    return damage


def _hnsw_garbage(data: Path) -> None:
    for f in (data / "chroma").rglob("*.bin"):
        f.write_bytes(b"\x00garbage" * 100)


case("damage", "chroma.sqlite3 truncated to 0 bytes, ask")(_damage_case(_truncate))
case("damage", "chroma.sqlite3 truncated to 0 bytes, ingest")(_damage_case(_truncate, ["ingest"]))
case("damage", "chroma.sqlite3 is garbage, ask")(_damage_case(_garbage))
case("damage", "chroma folder removed (the index was there), ask")(_damage_case(_no_chroma))
@case("damage", "hnsw segment files are garbage, ask")
def _(ctx):
    """Chroma keeps every vector in chroma.sqlite3 as well and rebuilds these files from it:
    right answers here are right, as long as every chunk is still found by its own vector."""
    data = ctx.fresh("hnsw")
    before = inspect(data)
    _hnsw_garbage(data)
    run = rag(["ask", "--json", FACENET_Q], data)
    out = judge(run, "ok" if run.rc == 0 else "error", _no_destructive_hint)
    if out.kind != "ok":
        return out
    ans = json.loads(run.out)
    if FACENET_ID not in [c["paper_id"] for c in ans.get("citations", [])]:
        return Outcome("lost", "answered, but not from the FaceNet paper")
    problem = lost(before, inspect(data))
    return Outcome("lost", problem) if problem else out
case("damage", "embedding cache is garbage, ingest")(_damage_case(
    _garbage_file("cache/embeddings.sqlite"), ["ingest", "--rebuild"], "ok"))
case("damage", "embedding cache is garbage, ask")(_damage_case(_garbage_file("cache/embeddings.sqlite"), None, "ok"))
case("damage", "lexical tokens.json is garbage, ask")(_damage_case(_garbage_file("lexical/papers/tokens.json", b"[1,2"), None, "ok"))
case("damage", "lexical tokens.json is a JSON list, ask")(_damage_case(_garbage_file("lexical/papers/tokens.json", b"[1, 2]"), None, "ok"))
case("damage", "BM25 files are garbage, ask")(_damage_case(_garbage_file("lexical/papers/bm25/params.index.json", b"{bad"), None, "ok"))


def _immutable(data: Path, on: bool) -> bool:
    return subprocess.run(["chattr", "-R", "+i" if on else "-i", str(data)], capture_output=True).returncode == 0


@case("damage", "read-only data dir, ask")
def _(ctx):
    data = ctx.fresh("readonly")
    rag(["ask", FACENET_Q], data)  # caches warm
    if not _immutable(data, True):
        return Outcome("ok", "skipped: chattr unavailable")
    try:
        run = rag(["ask", "--json", FACENET_Q], data)
    finally:
        _immutable(data, False)
    return judge(run, "ok" if run.rc == 0 else "error", _no_destructive_hint)


@case("damage", "read-only data dir, ingest")
def _(ctx):
    data = ctx.fresh("readonly2")
    f = write_jsonl(ctx.scratch("f") / "one.jsonl", synthetic(1, "RO", 3))
    if not _immutable(data, True):
        return Outcome("ok", "skipped: chattr unavailable")
    try:
        run = rag(["ingest", str(f)], data)
    finally:
        _immutable(data, False)
    return judge(run, "error", _no_destructive_hint)


# --- marker-like text in sources ---------------------------------------------------------------

def _marker_case(rows: list[dict], question: str):
    def fn(ctx: Ctx) -> Outcome:
        data = ctx.fresh("markers")
        f = write_jsonl(ctx.scratch("f") / "m.jsonl", rows)
        run = rag(["ingest", str(f)], data)
        if run.rc != 0 or "Traceback" in run.text:
            return judge(run, "ok")
        run = rag(["ask", "--json", question], data)
        out = judge(run, "ok")
        if out.kind != "ok":
            return out
        problem = cited_ok(run)
        ans = json.loads(run.out)
        extra = [n for n in range(1, 10) if f"[{n}]" in ans["answer"]
                 and n not in {c["n"] for c in ans["citations"]}]
        if problem or extra:
            return Outcome("miscite", problem or f"markers {extra} in the answer point at uncited papers")
        return out
    return fn


case("markers", "title 'Sparse Attention Revisited [2]'")(_marker_case(
    [{"title": "Sparse Attention Revisited [2]", "abstract": "Sparse attention for face detection keeps 40% of the "
      "tokens. We revisit sparse attention for face detection."}], "Which paper revisits sparse attention for face detection?"))
case("markers", "abstract containing '[Source 3]'")(_marker_case(
    [{"title": "Quokka Smile Detection", "abstract": "Quokka smile detection reaches 91% accuracy [Source 3]. "
      "As shown in [1, 3], quokka smiles are detected with a [ 2 ] stage network."}],
    "How accurate is quokka smile detection?"))
case("markers", "title with '[1, 3]' and abstract with '[4-5]'")(_marker_case(
    [{"title": "Wombat Gait [1, 3] Networks", "abstract": "Wombat gait networks recognise wombat gaits [4-5]. "
      "Wombat gait recognition reaches 88% accuracy."}], "Which paper recognises wombat gaits?"))


# --- concurrency ------------------------------------------------------------------------------

def _spawn(args: list[str], data: Path, log: Path) -> subprocess.Popen:
    env = base_env(RAG_DATA_DIR=str(data))
    fh = log.open("w")
    return subprocess.Popen([PY, "-m", "rag.cli", *args], stdout=fh, stderr=subprocess.STDOUT, env=env,
                            start_new_session=True)


def _wait(procs: list[subprocess.Popen], timeout: float) -> bool:
    deadline = time.time() + timeout
    for p in procs:
        try:
            p.wait(timeout=max(1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            for q in procs:
                if q.poll() is None:
                    os.killpg(q.pid, signal.SIGKILL)
            return False
    return True


def _all_listed(after: dict, rows: list[dict]) -> str | None:
    titles = set(after["papers"].values())
    missing = [r["title"] for r in rows if r["title"] not in titles]
    return f"{len(missing)} paper(s) of the file not listed (e.g. '{missing[0]}')" if missing else None


@case("concurrency", "two concurrent ingests of 2,000 papers each", slow=True)
def _(ctx):
    data = ctx.fresh("two-writers")
    before = inspect(data)
    d = ctx.scratch("f")
    a_rows, b_rows = synthetic(2000, "A", 11), synthetic(2000, "B", 22)
    a, b = write_jsonl(d / "a.jsonl", a_rows), write_jsonl(d / "b.jsonl", b_rows)
    pa = _spawn(["ingest", str(a)], data, d / "a.log")
    time.sleep(3)
    pb = _spawn(["ingest", str(b)], data, d / "b.log")
    if not _wait([pa, pb], 1800):
        return Outcome("hang", "ingests did not finish in 30 min")
    logs = (d / "a.log").read_text() + (d / "b.log").read_text()
    if "Traceback" in logs:
        return Outcome("traceback", logs.strip().splitlines()[-1][:160])
    after = inspect(data)
    problem = lost(before, after) or _all_listed(after, a_rows) or _all_listed(after, b_rows)
    if problem:
        return Outcome("lost", problem)
    ans = _ask_json(data, FACENET_Q)
    if not ans or FACENET_ID not in [c["paper_id"] for c in ans.get("citations", [])]:
        return Outcome("lost", "ask fails after the two ingests")
    if pa.returncode or pb.returncode:
        return Outcome("wrong", f"exit codes {pa.returncode}, {pb.returncode}")
    if "waiting" not in logs:
        return Outcome("wrong", "the second ingest did not say it waited")
    return Outcome("ok")


@case("concurrency", "a small ingest during a big one", slow=True)
def _(ctx):
    data = ctx.fresh("small-during-big")
    before = inspect(data)
    d = ctx.scratch("f")
    big, small = synthetic(2000, "C", 33), synthetic(20, "D", 44)
    fb, fs = write_jsonl(d / "big.jsonl", big), write_jsonl(d / "small.jsonl", small)
    pb = _spawn(["ingest", str(fb)], data, d / "big.log")
    time.sleep(8)
    run = rag(["ingest", str(fs)], data, timeout=1800)
    if not _wait([pb], 1800):
        return Outcome("hang", "big ingest did not finish")
    logs = (d / "big.log").read_text() + run.text
    if "Traceback" in logs:
        return Outcome("traceback", logs.strip().splitlines()[-1][:160])
    after = inspect(data)
    problem = lost(before, after) or _all_listed(after, big) or _all_listed(after, small)
    return Outcome("lost", problem) if problem else judge(run, "ok")


@case("concurrency", "ask (another process) during an ingest", slow=True)
def _(ctx):
    data = ctx.fresh("ask-during")
    d = ctx.scratch("f")
    rows = synthetic(1500, "E", 55)
    f = write_jsonl(d / "e.jsonl", rows)
    p = _spawn(["ingest", str(f)], data, d / "e.log")
    time.sleep(6)
    failures = []
    while p.poll() is None and len(failures) < 3:
        run = rag(["ask", "--json", FACENET_Q], data, timeout=300)
        try:
            ans = json.loads(run.out)
            if FACENET_ID not in [c["paper_id"] for c in ans["citations"]]:
                failures.append("FaceNet not cited")
        except (ValueError, KeyError):
            failures.append(run.err.strip().splitlines()[-1][:160] if run.err.strip() else f"exit {run.rc}")
    _wait([p], 1800)
    if failures:
        return Outcome("traceback" if any("Error" in x for x in failures) else "wrong", failures[0])
    ans = _ask_json(data, f"Which model is {rows[100]['title'].split()[0].lower()} {rows[100]['title'].split()[1].lower()}?")
    if not ans or rows[100]["title"] not in [c["title"] for c in ans.get("retrieved", [])]:
        return Outcome("lost", "a paper ingested meanwhile is not retrieved afterwards")
    return Outcome("ok")


@case("concurrency", "ingest --no-wait during an ingest", slow=True)
def _(ctx):
    data = ctx.fresh("nowait")
    d = ctx.scratch("f")
    f = write_jsonl(d / "big.jsonl", synthetic(1000, "F", 66))
    g = write_jsonl(d / "small.jsonl", synthetic(3, "G", 77))
    p = _spawn(["ingest", str(f)], data, d / "f.log")
    time.sleep(8)
    run = rag(["ingest", "--no-wait", str(g)], data)
    still = p.poll() is None
    _wait([p], 1800)
    if not still:
        return Outcome("ok", "skipped: the first ingest finished too soon")
    return judge(run, "error", lambda r: None if "another ingest" in r.err else "does not say another ingest runs")


_LONG_LIVED = r"""
import json, sys
from rag import Assistant, Settings
a = Assistant(Settings(data_dir=sys.argv[1], mode="extractive"))
a.ask("What accuracy does FaceNet reach on LFW?")
print("ready", flush=True)
sys.stdin.readline()  # meanwhile another process ingests
report, _ = a.ingest([sys.argv[2]])
print(json.dumps(len(report.added)), flush=True)
"""


@case("concurrency", "the chat's upload after a CLI ingest (a long-lived process writes)")
def _(ctx):
    """What the UI does: one process keeps its index open, a CLI ingest writes behind it,
    then the long-lived process ingests an upload."""
    data = ctx.fresh("long-lived")
    d = ctx.scratch("f")
    cli_rows, upload_rows = synthetic(1200, "H", 88), synthetic(20, "J", 99)  # past Chroma's 1,000-record sync
    f_cli, f_up = write_jsonl(d / "cli.jsonl", cli_rows), write_jsonl(d / "upload.jsonl", upload_rows)
    before = inspect(data)
    proc = subprocess.Popen([PY, "-c", _LONG_LIVED, str(data), str(f_up)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=base_env())
    if proc.stdout.readline().strip() != "ready":
        proc.kill()
        return Outcome("traceback", proc.stderr.read().strip().splitlines()[-1][:160])
    run = rag(["ingest", str(f_cli)], data, timeout=900)
    try:
        out, err = proc.communicate("\n", timeout=900)
    except subprocess.TimeoutExpired:
        proc.kill()
        return Outcome("hang", "the long-lived process did not finish its ingest")
    if "Traceback" in err or "Traceback" in run.text:
        return Outcome("traceback", (err or run.text).strip().splitlines()[-1][:160])
    after = inspect(data)
    problem = lost(before, after) or _all_listed(after, cli_rows) or _all_listed(after, upload_rows)
    if problem:
        return Outcome("lost", problem)
    ans = _ask_json(data, FACENET_Q)
    if not ans or FACENET_ID not in [c["paper_id"] for c in ans.get("citations", [])]:
        return Outcome("lost", "ask fails afterwards")
    return Outcome("ok") if proc.returncode == 0 and run.rc == 0 else Outcome("wrong", f"exit {proc.returncode}")


@case("concurrency", "ingest --rebuild afterwards")
def _(ctx):
    data = ctx.fresh("rebuild")
    return judge(rag(["ingest", "--rebuild"], data, timeout=900), "ok")


# --- main ---------------------------------------------------------------------------------------

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", help="run only cases whose name contains this")
    ap.add_argument("--skip-slow", action="store_true", help="skip the 2,000-paper concurrency cases")
    ap.add_argument("--json", type=Path, help="write the results here")
    ap.add_argument("--work", type=Path, help="scratch folder (default: a temp dir, removed afterwards)")
    args = ap.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="hostile-"))
    work.mkdir(parents=True, exist_ok=True)
    ctx = Ctx(work)
    import rag as under_test

    print(f"code under test: {Path(under_test.__file__).parent}; work dir {work}", flush=True)
    ctx.build_template()
    results = []
    for c in CASES:
        if args.only and args.only not in c.name:
            continue
        if args.skip_slow and c.slow:
            continue
        t0 = time.perf_counter()
        try:
            out = c.fn(ctx)
        except Exception as exc:  # a bug in this script, not in the code under test
            out = Outcome("script-error", f"{type(exc).__name__}: {exc}")
        results.append({"group": c.group, "case": c.name, "outcome": out.kind, "detail": out.detail,
                        "seconds": round(time.perf_counter() - t0, 1)})
        print(f"{out.kind:10s} {c.group:11s} {c.name}  {out.detail}", flush=True)
    counts: dict[str, int] = {}
    for r in results:
        counts[r["outcome"]] = counts.get(r["outcome"], 0) + 1
    print(f"\n{len(results)} inputs: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    if args.json:
        args.json.write_text(json.dumps({"counts": counts, "results": results}, indent=1))
    if not args.work:
        subprocess.run(["chattr", "-R", "-i", str(work)], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)
    return 1 if any(counts.get(k) for k in BAD) else 0


if __name__ == "__main__":
    sys.exit(main())
