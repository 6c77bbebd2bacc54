"""How often does the offline support check (rag/support.py) pass a sentence cited to the
right paper, and how often to a wrong one? Prints a table, asserts nothing.

Every sentence of every bundled abstract (at least 4 content words) is a claim whose true
source is known. It is checked as:

- `own`: cited to its own paper, verbatim (must pass);
- `own, 40% words dropped`: a crude shortening, cited to its own paper (should pass);
- `own, reworded`: a crude paraphrase (a quarter of the words dropped, common words swapped
  for synonyms, "The paper says that" in front), cited to its own paper (should pass);
- `random other`: cited to a random other paper (should fail);
- `nearest other`: cited to the other paper whose abstract is most similar to the sentence
  (the mean of its sentence vectors; the "most similar wrong paper" of eval/README.md);
- `hardest other`: cited to the other paper holding the sentence's nearest sentence
  (the case the cosine test finds hardest);
- `nearest other, own retrieved`: as `nearest other`, but the true paper is among the other
  retrieved papers the check may compare with (what the guard sees: the true source was
  retrieved too). Only meaningful for a checker that compares (`others=`).

    python bench/bench_support.py [--rag-path DIR] [--limit-papers N] [--json OUT]

`--rag-path` runs another copy of the `rag` package (e.g. `git archive main rag | tar -x -C
/tmp/old`), for a before/after comparison with the same sentences and the same vectors.
"""

from __future__ import annotations

import argparse
import inspect
import json
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rag-path", type=Path, help="folder holding the `rag` package to measure (default: this repo)")
    ap.add_argument("--limit-papers", type=int, default=0)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    sys.path.insert(0, str(args.rag_path or ROOT))

    import numpy as np

    import rag
    from rag.chunking import split_sentences
    from rag.corpus import load_bundled
    from rag.embeddings import OnnxMiniLM
    from rag.support import SupportChecker
    from rag.text import terms
    from rag.types import Context

    print(f"rag package: {Path(rag.__file__).parent}", file=sys.stderr)
    papers = load_bundled()
    if args.limit_papers:
        papers = papers[: args.limit_papers]
    model = OnnxMiniLM()
    cache: dict[str, np.ndarray] = {}

    def embed(texts):
        missing = [t for t in dict.fromkeys(texts) if t not in cache]
        if missing:
            for t, v in zip(missing, model.embed(missing)):
                cache[t] = np.asarray(v, dtype=np.float32)
        return np.stack([cache[t] for t in texts]) if texts else np.zeros((0, 384), np.float32)

    if "idf" in inspect.signature(SupportChecker).parameters:
        from rag.lexicon import LexicalIndex, doc_text

        lex = LexicalIndex.from_documents([p.id for p in papers], [terms(doc_text(p.title, p.abstract)) for p in papers])
        checker = SupportChecker(embed, idf=lex.term_idf)  # the IDF the product passes: BM25's, same corpus
    else:
        checker = SupportChecker(embed)
    compares = "others" in inspect.signature(checker.supports).parameters
    ctx = [Context(n=i, paper_id=p.id, title=p.title, abstract=p.abstract, score=1.0) for i, p in enumerate(papers, 1)]
    sents = [split_sentences(p.abstract) or [p.abstract] for p in papers]
    vecs = [embed(s) for s in sents]
    centroids = np.stack([v.mean(axis=0) / np.linalg.norm(v.mean(axis=0)) for v in vecs])
    rng = random.Random(args.seed)

    synonyms = {"propose": "introduce", "proposes": "introduces", "method": "approach", "achieves": "reaches",
                "improve": "boost", "improves": "boosts", "show": "demonstrate", "results": "findings",
                "novel": "new", "uses": "employs", "use": "employ", "network": "model", "framework": "system",
                "approach": "technique", "images": "pictures", "significantly": "substantially",
                "performance": "accuracy", "outperforms": "beats", "existing": "prior", "large": "big",
                "generate": "produce"}

    def reword(text: str) -> str:
        kept = [synonyms.get(w.lower(), w) for w in text.split() if rng.random() >= 0.25]
        return "The paper says that " + " ".join(kept)

    def drop_words(text: str) -> str:
        ws = text.split()
        keep = [w for w in ws if rng.random() >= 0.4]
        return " ".join(keep or ws[:1])

    cases = {k: [0, 0] for k in ("own", "own, 40% words dropped", "own, reworded", "random other", "nearest other",
                                 "hardest other", "reworded, nearest other", "nearest other, own retrieved",
                                 "reworded, nearest other, own retrieved", "own, nearest other retrieved",
                                 "reworded own, nearest other retrieved")}

    def check(name: str, sentence: str, cited, others=()):
        ok = checker.supports(sentence, cited, others=list(others)) if compares else checker.supports(sentence, cited)
        cases[name][0] += int(bool(ok))
        cases[name][1] += 1

    t0 = time.perf_counter()
    for i, (c, ss, vs) in enumerate(zip(ctx, sents, vecs)):
        for s, v in zip(ss, vs):
            if len(set(terms(s, compounds=False))) < 4:
                continue
            by_paper = centroids @ v
            by_paper[i] = -9
            nearest = int(np.argmax(by_paper))
            best = [float((vecs[j] @ v).max()) if j != i else -9 for j in range(len(ctx))]
            hardest = int(np.argmax(best))
            other = rng.choice([j for j in range(len(ctx)) if j != i])
            check("own", s, [c])
            check("own, 40% words dropped", drop_words(s), [c])
            r = reword(s)
            check("own, reworded", r, [c])
            check("reworded, nearest other", r, [ctx[nearest]])
            check("random other", s, [ctx[other]])
            check("nearest other", s, [ctx[nearest]])
            check("hardest other", s, [ctx[hardest]])
            if compares:
                check("nearest other, own retrieved", s, [ctx[nearest]], others=[c])
                check("reworded, nearest other, own retrieved", r, [ctx[nearest]], others=[c])
                check("own, nearest other retrieved", s, [c], others=[ctx[nearest]])
                check("reworded own, nearest other retrieved", r, [c], others=[ctx[nearest]])
    took = time.perf_counter() - t0
    rows = {k: {"passed": v[0], "n": v[1], "rate": round(v[0] / v[1], 4) if v[1] else None} for k, v in cases.items()}
    print(f"\n{'sentence cited to':42s} {'passes':>8s} {'n':>6s}")
    for k, r in rows.items():
        rate = f"{100 * r['rate']:.1f}%" if r["rate"] is not None else "n/a"
        print(f"{k:42s} {rate:>8s} {r['n']:6d}")
    print(f"\n{len(ctx)} papers, {took:.0f} s; checker {type(checker).__module__}.{type(checker).__name__}"
          f"{' (compares with the other retrieved papers)' if compares else ''}")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "papers": len(ctx), "compares": compares}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
