"""Growth curve: how ingest, index size, memory and query latency grow with the corpus.

Synthetic corpora of 1k, 2k, 5k and 10k abstracts: the 119 bundled papers unchanged (so the
questions of eval/questions.jsonl keep their answers) plus synthetic abstracts made by
recombining sentences of different source abstracts (bundled corpus + PubMedQA's
ori_pqal.json from ../shared/datasets/pubmedqa, skipped cleanly if absent). Every synthetic
paper has a distinct id and title; corpora are nested (the 1k corpus is a prefix of the 2k one)
and deterministic (seeded).

Each size runs in its own subprocess with a fresh data dir: it builds the index (ingest time,
index size on disk, the BM25 build), then starts another process that only opens the index and
answers (~50 questions: open + first answer, retrieve and extractive ask p50/p95, ask twice:
first pass fills the sentence-vector cache, second is warm), so that peak RSS is what answering
costs. With --reuse-vectors the index of those sizes is built from re-used real vectors (see
`prefill_reused_vectors`; the output says so), which is how the 100k query path is measured
without hours of CPU embedding.

Results are merged into bench/results/scale.json after each size (a rerun skips sizes already
there unless --force) and plotted to bench/results/scale.png.
A killed run can continue its half-built index with --resume-ingest (the product skips papers it
already committed; the ingest time then adds the checkpointed time of the earlier attempt).

    python bench/bench_scale.py [--quick] [--sizes 1000 2000 5000 10000] [--questions 50] [--force]
    python bench/bench_scale.py --sizes 10000 100000 --reuse-vectors 10000 100000
    python bench/bench_scale.py --plot-only
    python bench/bench_scale.py --profile 2000      # cProfile of ingest + first ask at one size
    python bench/bench_scale.py --profile-queries /tmp/paper-rag-bench-scale/size-10000   # after --keep
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import (RESULTS, ROOT, Progress, clean_env, du_bytes, load_question_texts, loadavg,  # noqa: E402
                      machine_info, memory_mib, summary_ms, write_json)

PUBMED = ROOT.parent / "shared" / "datasets" / "pubmedqa" / "ori_pqal.json"
DEFAULT_SIZES = [1000, 2000, 5000, 10000]
SEED = 20240601


# --- synthetic corpora ------------------------------------------------------------------------
def source_docs() -> list[dict]:
    """[{title, abstract, year, domain}] from the bundled corpus and, if present, PubMedQA."""
    from rag.corpus import load_bundled

    docs = [{"title": p.title, "abstract": p.abstract, "year": p.year, "domain": "ml"} for p in load_bundled()]
    if PUBMED.is_file():
        try:
            data = json.loads(PUBMED.read_text(encoding="utf-8"))
            for pmid, rec in data.items():
                ctx = rec.get("CONTEXTS") or []
                text = " ".join([*ctx, rec.get("LONG_ANSWER", "")]).strip()
                if text and rec.get("QUESTION"):
                    year = rec.get("YEAR")
                    docs.append({"title": rec["QUESTION"].strip(), "abstract": text,
                                 "year": int(year) if str(year).isdigit() else None, "domain": "pubmed"})
        except (ValueError, OSError, AttributeError) as exc:
            print(f"note: skipping PubMedQA ({type(exc).__name__}: {exc})", file=sys.stderr)
    else:
        print(f"note: {PUBMED} not found; synthetic papers recombine the bundled corpus only", file=sys.stderr)
    return docs


def synthetic_corpus(size: int, seed: int = SEED):
    """The bundled papers plus `size - len(bundled)` recombined abstracts (deterministic, nested)."""
    from rag.chunking import split_sentences
    from rag.corpus import load_bundled
    from rag.types import Paper

    bundled = load_bundled()
    docs = source_docs()
    for d in docs:
        d["sentences"] = split_sentences(d["abstract"])
    by_domain: dict[str, list[dict]] = {}
    for d in docs:
        if len(d["sentences"]) >= 2:
            by_domain.setdefault(d["domain"], []).append(d)
    pool = [d for group in by_domain.values() for d in group]
    papers = list(bundled[:size])
    seen_titles = {p.title.lower() for p in papers}
    for j in range(max(0, size - len(papers))):
        rng = random.Random(seed * 1_000_003 + j)  # per-paper seed: corpus N is a prefix of corpus M > N
        base = pool[j % len(pool)]
        group = by_domain[base["domain"]]
        donors = [rng.choice(group) for _ in range(2)]
        sentences = []
        for i, s in enumerate(base["sentences"]):
            if i > 0 and rng.random() < 0.5:
                donor = donors[rng.randrange(2)]
                s = donor["sentences"][min(i, len(donor["sentences"]) - 1) if rng.random() < 0.7
                                       else rng.randrange(len(donor["sentences"]))]
            sentences.append(s)
        bw, dw = base["title"].split(), donors[0]["title"].split()
        title = " ".join(bw[: max(1, len(bw) // 2)] + dw[len(dw) // 2:]).rstrip("?") or base["title"]
        if title.lower() in seen_titles:
            title = f"{title} ({j})"
        seen_titles.add(title.lower())
        papers.append(Paper(id=f"syn-{j:05d}", title=title, abstract=" ".join(sentences), year=base["year"],
                            metadata={"synthetic": True, "domain": base["domain"]}))
    return papers


# --- vectors re-used for synthetic papers (the 100k query path) ----------------------------------
def prefill_reused_vectors(papers, settings, progress_every: int = 10000) -> dict:
    """Fill the product's embedding cache with vectors made from real ones, so its ingest embeds
    nothing: every sentence of the source abstracts (the bundled corpus and PubMedQA) is embedded
    by the real model once; a chunk's vector is the normalised sum of the vectors of the source
    sentences it is made of (a chunk cut inside sentences gets its paper's). Embedding 100k
    abstracts for real costs hours of CPU here; the query path, which
    embeds only the question, is what this measures. The ingest then exercises everything else
    (chunking, Chroma writes, the lexicon)."""
    import numpy as np

    from rag.chunking import split_sentences
    from rag.embeddings import EmbeddingCache
    from rag.store import PaperStore

    store = PaperStore(settings)
    model = store.embedder
    t = time.perf_counter()
    sentences = sorted({s for d in source_docs() for s in split_sentences(d["abstract"])})
    saved = Path(os.environ.get("TMPDIR", "/tmp")) / "paper-rag-bench-source-sentences.npz"
    digest = hashlib.sha256("\x1f".join([model.model_id, *sentences]).encode()).hexdigest()
    if saved.exists() and str(np.load(saved)["digest"]) == digest:
        vecs = np.load(saved)["vecs"]  # the same sentences, the same model: embedded by an earlier run
    else:
        vecs = model.embed(sentences)
        np.savez(saved, vecs=vecs, digest=np.array(digest))
    known = dict(zip(sentences, vecs))
    info = {"source_sentences_embedded": len(sentences), "source_embed_s": round(time.perf_counter() - t, 1)}
    cache = EmbeddingCache(settings.cache_dir / "embeddings.sqlite")
    t, n_chunks, n_fallback, batch = time.perf_counter(), 0, 0, []
    for i, p in enumerate(papers, 1):
        whole = [known[s] for s in split_sentences(p.abstract) if s in known]
        for c in store.chunker.chunk_paper(p):
            parts = [known[s] for s in split_sentences(c.text) if s in known]
            if not parts:  # a chunk cut inside a sentence: the paper's known sentences stand in
                parts, n_fallback = whole or [next(iter(known.values()))], n_fallback + 1
            v = np.sum(parts, axis=0)
            batch.append((EmbeddingCache.key(model.model_id, c.embed_text), v / (np.linalg.norm(v) or 1.0)))
            n_chunks += 1
        if len(batch) >= 5000 or i == len(papers):
            cache.put_many(batch)
            batch = []
        if i % progress_every == 0:
            print(f"  prefill {i}/{len(papers)} papers, {n_chunks} chunks", flush=True)
    info.update(prefill_chunks=n_chunks, prefill_fallback_chunks=n_fallback,
                prefill_s=round(time.perf_counter() - t, 1))
    return info


# --- one size, in its own process ---------------------------------------------------------------
def worker(size: int, data_dir: Path, out: Path, resume: bool, reuse: bool = False) -> None:
    """Build the index of one size (real embeddings, or re-used ones with `reuse`); `run_size`
    then answers in a separate process (`query_worker`), so its peak RSS is what answering costs."""
    res: dict = {"size": size, "loadavg_at_start": loadavg(), "vectors": "reused" if reuse else "real"}
    from rag import Assistant, Settings
    from rag.embeddings import get_embedder

    t = time.perf_counter()
    papers = synthetic_corpus(size)
    res["corpus_build_s"] = time.perf_counter() - t
    res["papers"] = len(papers)
    res["abstract_chars"] = sum(len(p.abstract) for p in papers)

    settings = Settings(data_dir=data_dir, mode="extractive")
    t = time.perf_counter()
    get_embedder(settings)
    res["model_load_s"] = time.perf_counter() - t
    if reuse:
        res["reused_vectors"] = prefill_reused_vectors(papers, settings)
        print(f"  [{size}] re-used vectors: {res['reused_vectors']}", flush=True)

    checkpoint = data_dir / "bench-ingest-checkpoint.json"
    prev = {"done": 0, "elapsed_s": 0.0}
    if resume and checkpoint.exists():
        prev = json.loads(checkpoint.read_text())
        print(f"  resuming: {prev['done']} papers were committed in {prev['elapsed_s']:.0f}s", flush=True)
    assistant = Assistant(settings)
    progress = Progress(label=f"[{size}] ", every=max(50, size // 20), checkpoint=checkpoint,
                        offset_done=prev["done"], offset_s=prev["elapsed_s"])
    t, c = time.perf_counter(), time.process_time()
    report, _ = assistant.ingest(papers=papers, progress=progress)
    ingest_s = time.perf_counter() - t
    res["ingest_cpu_s"] = time.process_time() - c  # all threads; less sensitive to other processes
    res["ingest_s"] = ingest_s + prev["elapsed_s"]
    res["ingest_resumed"] = bool(prev["done"])
    res["ingest_papers_per_s"] = len(papers) / res["ingest_s"]
    res["chunks_embedded"] = report.chunks_embedded
    res["chunks_total"] = assistant.store.chunks.count()
    res["ingest_report"] = report.summary()
    res["ingest_peak_rss_mib"] = memory_mib()["peak_rss_mib"]
    checkpoint.unlink(missing_ok=True)
    t = time.perf_counter()
    assistant.retriever.lexical()  # the BM25 build of this revision (once per ingest)
    res["bm25_build_s"] = time.perf_counter() - t
    del assistant, papers
    disk_after = {sub.name: round(du_bytes(sub)["allocated"] / 2**20, 1) for sub in sorted(data_dir.iterdir())
                  if sub.is_dir()}
    res["disk_mib_by_folder"] = disk_after
    disk = du_bytes(data_dir)  # everything the product keeps: Chroma, caches, the lexicon
    res["index_mib"] = disk["allocated"] / 2**20
    res["index_apparent_mib"] = disk["apparent"] / 2**20
    print(f"  [{size}] ingest {res['ingest_s']:.1f}s ({res['ingest_papers_per_s']:.1f} papers/s, "
          f"{res['chunks_total']} chunks), BM25 build {res['bm25_build_s']:.2f}s, disk (MiB) {disk_after}", flush=True)
    for k, v in list(res.items()):
        if isinstance(v, float):
            res[k] = round(v, 4)
    write_json(out, res)


def query_worker(data_dir: Path, out: Path, n_questions: int, dense_index: str = "auto",
                 chroma_url: str | None = None) -> None:
    """A new process over a built index: open + first answer, then retrieve/ask latencies and
    the peak RSS of answering (nothing else ran in this process)."""
    t0 = time.perf_counter()
    from rag import Assistant, Settings
    from rag.eval import load_questions

    res: dict = {"import_s": time.perf_counter() - t0}
    questions = load_question_texts(n_questions)
    gold = {q.question: set(q.gold) for q in load_questions(ROOT / "eval" / "questions.jsonl")}
    t = time.perf_counter()
    a = Assistant(Settings(data_dir=data_dir, mode="extractive", dense_index=dense_index, chroma_url=chroma_url))
    res["rss_after_open_mib"] = memory_mib()["rss_mib"]
    first = a.ask(questions[0])
    res["dense_unit"] = a.retriever.dense.unit(a.store.revision())
    res["open_first_answer_s"] = time.perf_counter() - t
    res["rss_after_first_answer_mib"] = memory_mib()["rss_mib"]
    res["first_answer_chars"] = len(first.text)
    retrieve_ms, ask_ms, ask_warm_ms, hits, answerable = [], [], [], 0, 0
    stages: dict[str, list[float]] = {}
    for q in questions:
        t = time.perf_counter()
        r = a.retrieve(q)
        retrieve_ms.append((time.perf_counter() - t) * 1000)
        if gold.get(q):
            answerable += 1
            hits += bool(gold[q] & {c.paper_id for c in r.contexts})
        t = time.perf_counter()
        ans = a.ask(q)
        ask_ms.append((time.perf_counter() - t) * 1000)
        for k, v in ans.timings_ms.items():
            stages.setdefault(k, []).append(v)
    for q in questions:
        t = time.perf_counter()
        a.ask(q)
        ask_warm_ms.append((time.perf_counter() - t) * 1000)
    res["retrieve_ms"] = summary_ms(retrieve_ms)
    res["ask_ms"] = summary_ms(ask_ms)
    res["ask_warm_ms"] = summary_ms(ask_warm_ms)
    res["ask_stage_p50_ms"] = {k: round(statistics.median(v), 1) for k, v in stages.items()}
    res["gold_in_top_k"] = round(hits / answerable, 3) if answerable else None
    res["questions"] = len(questions)
    res["peak_rss_mib"] = memory_mib()["peak_rss_mib"]
    res["query_loadavg"] = loadavg()
    write_json(out, res)
    print(f"  [{data_dir.name}] open + first answer {res['open_first_answer_s']:.2f}s | retrieve p50 "
          f"{res['retrieve_ms']['p50']} ms p95 {res['retrieve_ms']['p95']} ms | ask p50 {res['ask_ms']['p50']} ms "
          f"p95 {res['ask_ms']['p95']} ms (warm p50 {res['ask_warm_ms']['p50']}) | peak RSS answering "
          f"{res['peak_rss_mib']:.0f} MiB", flush=True)


def _wait_http(url: str, timeout: float = 600) -> None:
    import urllib.request

    end = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return
        except OSError:
            if time.monotonic() > end:
                raise
            time.sleep(0.5)


def query_variants(data_dir: Path, out: Path, n_questions: int) -> dict:
    """One built index answered three ways, each in a fresh process: dense search over the
    chunk vectors, over the paper vectors, and (auto) through `chroma run` serving the same
    files, whose own peak RSS is read from /proc once the answering process is done."""
    import socket

    def answer(name: str, *extra: str) -> dict:
        q_out = out.with_name(f"{out.stem}-{name}.json")
        cmd = [sys.executable, str(Path(__file__).resolve()), "--query-worker", str(data_dir), "--out", str(q_out),
               "--questions", str(n_questions), *extra]
        subprocess.run(cmd, cwd=ROOT, env=clean_env(), check=True)
        return json.loads(q_out.read_text())

    res = {"chunks": answer("chunks", "--dense-index", "chunks"),
           "papers": answer("papers", "--dense-index", "papers")}
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    chroma = Path(sys.executable).parent / "chroma"
    log = out.with_name(f"{out.stem}-chroma-server.log").open("w")
    server = subprocess.Popen([str(chroma), "run", "--path", str(data_dir / "chroma"), "--host", "127.0.0.1",
                               "--port", str(port)], stdout=log, stderr=subprocess.STDOUT, env=clean_env())
    try:
        t = time.perf_counter()
        _wait_http(f"http://127.0.0.1:{port}/api/v2/heartbeat")
        server_start = time.perf_counter() - t
        res["server"] = answer("server", "--chroma-url", f"http://127.0.0.1:{port}")
        res["server"]["server_start_s"] = round(server_start, 2)
        res["server"]["server_peak_rss_mib"] = memory_mib(server.pid)["peak_rss_mib"]
    finally:
        server.terminate()
        server.wait(timeout=60)
        log.close()
    write_json(out, res)
    print(f"\n{'variant':>8} {'unit':>6} {'RSS ans':>8} {'server RSS':>10} {'open+1st':>8} {'retr p50':>8} "
          f"{'ask p50':>7} {'warm':>5} {'gold@k':>6}")
    for name, r in res.items():
        print(f"{name:>8} {r.get('dense_unit', '?'):>6} {r['peak_rss_mib']:>8.0f} "
              f"{r.get('server_peak_rss_mib', float('nan')):>10.0f} {r['open_first_answer_s']:>8.2f} "
              f"{r['retrieve_ms']['p50']:>8.1f} {r['ask_ms']['p50']:>7.0f} {r['ask_warm_ms']['p50']:>5.0f} "
              f"{r['gold_in_top_k']:>6}")
    return res


def run_size(size: int, args) -> dict | None:
    data_dir = args.work / f"size-{size}"
    if data_dir.exists() and not args.resume_ingest:
        shutil.rmtree(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    out = args.work / f"result-{size}.json"
    out.unlink(missing_ok=True)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", str(size), "--data-dir", str(data_dir),
           "--out", str(out), "--questions", str(args.questions)]
    if size in (args.reuse_vectors or []):
        cmd.append("--reuse")
    if args.resume_ingest:
        cmd.append("--resume-ingest")
    print(f"== {size} papers (data dir {data_dir}) load {loadavg()}", flush=True)
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=clean_env())
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t
    if proc.returncode != 0 or not out.exists():
        print(f"   size {size} failed (exit {proc.returncode})", file=sys.stderr)
        return None
    res = json.loads(out.read_text())
    q_out = out.with_name(out.stem + "-query.json")
    cmd = [sys.executable, str(Path(__file__).resolve()), "--query-worker", str(data_dir), "--out", str(q_out),
           "--questions", str(args.questions)]
    subprocess.run(cmd, cwd=ROOT, env=clean_env(), check=True)
    res.update(json.loads(q_out.read_text()))
    res["loadavg_at_end"] = loadavg()
    res["wall_s"] = round(wall, 1)
    res["peak_rss_mib_ingest_process"] = round(usage.ru_maxrss / 1024, 1)  # wait4: the building process
    if not args.keep:
        shutil.rmtree(data_dir, ignore_errors=True)
    return res


# --- plot -----------------------------------------------------------------------------------------
PANELS = [  # (key, title, target line, extra series plotted in the same panel)
    ("ingest_s", "ingest time (s)", None, {}),
    ("ingest_papers_per_s", "ingest throughput (papers/s)", None, {}),
    ("index_mib", "data dir on disk (MiB, du)", None, {}),
    ("peak_rss_mib", "peak RSS (MiB)", 1.5 * 1024, {}),
    ("retrieve_ms", "retrieve latency (ms)", 50, {}),
    ("ask_ms", "extractive ask latency (ms)", 150, {}),
    ("bm25_build_s", "BM25 build after ingest (s)", None,
     {}),
    ("model_load_s", "model load (s)", None, {}),
]


def plot(scale: dict, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = sorted(scale["sizes"].values(), key=lambda r: r["size"])
    if not rows:
        return
    xs = [r["papers"] for r in rows]
    fig, axes = plt.subplots(2, 4, figsize=(18, 8))
    for ax, (key, label, target, extra) in zip(axes.flat, PANELS):
        vals = [r.get(key) for r in rows]
        if isinstance(vals[0], dict):
            ax.plot(xs, [v["p50"] for v in vals], "o-", label="p50")
            ax.plot(xs, [v["p95"] for v in vals], "s--", label="p95")
            warm = [r.get("ask_warm_ms", {}).get("p50") for r in rows] if key == "ask_ms" else None
            if warm and all(w is not None for w in warm):
                ax.plot(xs, warm, "^:", label="p50, warm cache")
        else:
            ax.plot(xs, vals, "o-", label="cold build" if extra else None)
            for k2, lab2 in extra.items():
                v2 = [r.get(k2) for r in rows]
                if all(v is not None for v in v2):
                    ax.plot(xs, v2, "s--", label=lab2)
        if key == "ingest_papers_per_s":  # throughput moves with the load other processes put on the cores
            for x, r in zip(xs, rows):
                ax.annotate(f"load {r.get('loadavg_at_start', ['?'])[0]}", (x, r[key]), fontsize=7,
                            textcoords="offset points", xytext=(4, -10))
        if target:
            ax.axhline(target, color="red", lw=0.8, ls=":", label=f"target {target:g}")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
        ax.set_ylim(bottom=0)
        ax.set_title(label, fontsize=10)
        ax.set_xlabel("papers")
        ax.grid(alpha=0.3)
    m = scale.get("machine", {})
    fig.suptitle(f"paper-rag growth curve ({m.get('cpus')} cpus, load at start {m.get('loadavg_at_start')}; "
                 f"other processes may have been running)", fontsize=11)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)
    print(f"wrote {png}")


# --- profile --------------------------------------------------------------------------------------
def profile(size: int, work: Path, out_dir: Path) -> None:
    """cProfile of ingest and of a cold first ask (separate from the timed runs: cProfile slows Python)."""
    import cProfile
    import io
    import pstats

    from rag import Assistant, Settings

    papers = synthetic_corpus(size)
    data_dir = work / f"profile-{size}"
    shutil.rmtree(data_dir, ignore_errors=True)
    settings = Settings(data_dir=data_dir, mode="extractive")
    a = Assistant(settings)
    a.store  # model + Chroma outside the profile
    for name, fn in (("ingest", lambda: a.ingest(papers=papers, progress=Progress(f"[profile {size}] ", max(50, size // 10)))),
                     ("first_ask", lambda: Assistant(settings).ask("Which datasets were used to evaluate face alignment?"))):
        prof = cProfile.Profile()
        prof.enable()
        fn()
        prof.disable()
        path = out_dir / f"profile-{size}-{name}.prof"
        path.parent.mkdir(parents=True, exist_ok=True)
        prof.dump_stats(str(path))
        buf = io.StringIO()
        st = pstats.Stats(prof, stream=buf).sort_stats("cumulative")
        st.print_stats(35)
        (out_dir / f"profile-{size}-{name}.txt").write_text(buf.getvalue())
        print(f"--- {name} @ {size}: top by cumulative time (full: {path})")
        print("\n".join(buf.getvalue().splitlines()[:60]))
    shutil.rmtree(data_dir, ignore_errors=True)


def profile_queries(data_dir: Path, out_dir: Path, n_questions: int) -> None:
    """Steady-state query path on an existing index (e.g. one kept with --keep): micro-timings of
    the store reads every question makes, then cProfile of retrieve + extractive ask."""
    import cProfile
    import io
    import pstats

    from rag import Assistant, Settings

    settings = Settings(data_dir=data_dir, mode="extractive")
    a = Assistant(settings)
    questions = load_question_texts(n_questions)
    a.ask(questions[0])  # model, Chroma, BM25 loaded
    store = a.store

    def per_call_ms(fn, n=20):
        t = time.perf_counter()
        for _ in range(n):
            fn()
        return round((time.perf_counter() - t) * 1000 / n, 2)

    qvec = store.embedder.embed_one(questions[0])
    micro = {
        "papers.count()": per_call_ms(store.papers.count),
        "chunks.count()": per_call_ms(store.chunks.count),
        "store.revision()": per_call_ms(store.revision),
        "store.all_papers() (cached)": per_call_ms(store.all_papers),
        "retriever.lexical() (cached)": per_call_ms(a.retriever.lexical),
        "embed_one(question)": per_call_ms(lambda: store.embedder.embed_one(questions[0])),
        "query_chunks(fetch_k)": per_call_ms(lambda: store.query_chunks(qvec, settings.fetch_k)),
    }
    ids = [c.paper_id for c in a.retrieve(questions[0]).contexts]
    micro["chunks_of(k papers)"] = per_call_ms(lambda: store.chunks_of(ids))
    micro["paper_vectors(k papers)"] = per_call_ms(lambda: store.paper_vectors(ids))
    print(f"papers {store.count()}, chunks {store.chunks.count()}; per call (ms): {json.dumps(micro, indent=1)}")
    prof = cProfile.Profile()
    prof.enable()
    for q in questions:
        a.retrieve(q)
        a.ask(q)
    prof.disable()
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("cumulative").print_stats(45)
    tag = f"profile-queries-{store.count()}"
    prof.dump_stats(str(out_dir / f"{tag}.prof"))
    (out_dir / f"{tag}.txt").write_text(json.dumps(micro, indent=1) + "\n\n" + buf.getvalue())
    write_json(out_dir / f"{tag}.json", {"papers": store.count(), "per_call_ms": micro})
    print("\n".join(buf.getvalue().splitlines()[:75]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="1k and 2k only")
    ap.add_argument("--sizes", type=int, nargs="+")
    ap.add_argument("--questions", type=int, default=50)
    ap.add_argument("--force", action="store_true", help="rerun sizes already in the results")
    ap.add_argument("--keep", action="store_true", help="keep each size's data dir")
    ap.add_argument("--resume-ingest", action="store_true", help="continue a killed size's half-built index")
    ap.add_argument("--work", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "paper-rag-bench-scale")
    ap.add_argument("--json", type=Path, default=RESULTS / "scale.json")
    ap.add_argument("--png", type=Path, default=RESULTS / "scale.png")
    ap.add_argument("--plot-only", action="store_true")
    ap.add_argument("--profile", type=int, metavar="SIZE", help="cProfile ingest + first ask at SIZE papers")
    ap.add_argument("--profile-queries", type=Path, metavar="DATA_DIR",
                    help="micro-timings + cProfile of retrieve/ask on an existing index (e.g. kept with --keep)")
    ap.add_argument("--reuse-vectors", type=int, nargs="+", metavar="SIZE",
                    help="sizes whose index is built from re-used real vectors (no model per chunk)")
    ap.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--reuse", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--variants", type=Path, metavar="DATA_DIR",
                    help="answer one kept index three ways (chunk vectors, paper vectors, a `chroma run` server)")
    ap.add_argument("--query-worker", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--dense-index", default="auto", help=argparse.SUPPRESS)
    ap.add_argument("--chroma-url", help=argparse.SUPPRESS)
    ap.add_argument("--data-dir", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.worker:
        worker(args.worker, args.data_dir, args.out, args.resume_ingest, args.reuse)
        return
    if args.query_worker:
        query_worker(args.query_worker, args.out, args.questions, args.dense_index, args.chroma_url)
        return
    if args.variants:
        query_variants(args.variants, args.out or args.work / f"variants-{args.variants.name}.json", args.questions)
        return
    if args.profile:
        profile(args.profile, args.work, RESULTS)
        return
    if args.profile_queries:
        profile_queries(args.profile_queries, RESULTS, args.questions)
        return

    scale = json.loads(args.json.read_text()) if args.json.exists() else {}
    scale.setdefault("sizes", {})
    if not args.plot_only:
        sizes = args.sizes or ([1000, 2000] if args.quick else DEFAULT_SIZES)
        scale["machine"] = machine_info()
        scale["pubmedqa"] = PUBMED.is_file()
        scale["note"] = ("bundled 119 papers + synthetic recombined abstracts; each size in its own process "
                         "and a fresh data dir; other processes may have been running (see loadavg)")
        print(f"machine: {scale['machine']['cpus']} cpus, load {scale['machine']['loadavg_at_start']}; "
              f"sizes {sizes}; PubMedQA {'found' if scale['pubmedqa'] else 'absent'}")
        for size in sizes:
            if str(size) in scale["sizes"] and not (args.force or args.resume_ingest):
                print(f"== {size}: already in {args.json} (use --force to rerun)")
                continue
            res = run_size(size, args)
            if res is not None:
                scale["sizes"][str(size)] = res
                write_json(args.json, scale)
        print(f"wrote {args.json}")
        print(f"\n{'papers':>7} {'vectors':>7} {'chunks':>7} {'ingest s':>9} {'pap/s':>6} {'index MiB':>9} "
              f"{'RSS ans':>8} {'open+1st':>8} {'bm25 s':>7} {'retr p50/p95':>13} {'ask p50/p95':>13} {'warm ask':>8}")
        for r in sorted(scale["sizes"].values(), key=lambda r: r["size"]):
            print(f"{r['papers']:>7} {r.get('vectors', 'real'):>7} {r['chunks_total']:>7} {r['ingest_s']:>9.1f} "
                  f"{r['ingest_papers_per_s']:>6.1f} {r['index_mib']:>9.0f} {r['peak_rss_mib']:>8.0f} "
                  f"{r.get('open_first_answer_s', float('nan')):>8.2f} {r['bm25_build_s']:>7.2f} "
                  f"{r['retrieve_ms']['p50']:>6.0f}/{r['retrieve_ms']['p95']:<6.0f} "
                  f"{r['ask_ms']['p50']:>6.0f}/{r['ask_ms']['p95']:<6.0f} {r['ask_warm_ms']['p50']:>8.0f}")
        print("'reused' vectors: the index was built from real vectors of the source sentences, re-used for their "
              "synthetic variants (the model embedded only the sources and the questions); 'real': every chunk "
              "embedded by the model. RSS ans = peak RSS of a separate process that only opens and answers.")
    plot(scale, args.png)


if __name__ == "__main__":
    main()
