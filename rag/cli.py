"""`rag` on the command line. Heavy modules are imported inside commands so that
`rag --help` stays instant."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .errors import RagError


def _assistant(args):
    from .assistant import Assistant
    from .settings import load_settings

    overrides = {}
    if getattr(args, "mode", None):
        overrides["mode"] = args.mode
    if getattr(args, "k", None):
        overrides["k"] = args.k
    if getattr(args, "data_dir", None):
        overrides["data_dir"] = args.data_dir
    return Assistant(load_settings(**overrides))


def _progress():
    from tqdm import tqdm

    return lambda **kw: tqdm(file=sys.stderr, dynamic_ncols=True, **kw)


def _prepare_local_model(a) -> None:
    """In local mode, verify (on first use: assemble, with a progress bar) the model's GGUF
    before the first question, so a missing or damaged model is an error up front."""
    if a.mode == "local":
        a.ensure_local_model(progress=_progress())


def cmd_ingest(args) -> int:
    from .corpus import bundled_corpus_path

    a = _assistant(args)
    paths = list(args.paths)
    if args.bundled or not paths:
        paths.insert(0, bundled_corpus_path())
    if args.rebuild:
        a.store.delete_papers(list(a.store.all_papers()))
    report, loaded = a.ingest(paths, progress=_progress(), skip_invalid=args.skip_invalid)
    for err in loaded.errors:
        print(f"skipped: {err.message}", file=sys.stderr)
    for dup in loaded.duplicates:
        print(f"duplicate: {dup}", file=sys.stderr)
    print(report.summary())
    print(f"index: {a.store.location} ({a.store.count()} papers)")
    return 0


def _print_answer(answer, streamed: bool, evidence: bool = True) -> None:
    if not streamed:
        print(answer.text)
    if evidence and answer.evidence:
        print("\nEvidence:")
        for e in answer.evidence:
            print(f"  [{e.n}] \u201c{e.sentence}\u201d")
    if answer.meta.get("notice"):
        print(f"\nnote: {answer.meta['notice']}")
    if answer.meta.get("uncited"):
        print("\nnote: this answer cites no paper, so it could not be checked against the abstracts")
    if answer.meta.get("fallback"):
        print(f"\nnote: the local model's sentences were not supported by the sources; "
              f"showing the {answer.meta['fallback']} answer")
    if answer.citations:
        print("\nSources:")
        for c in answer.citations:
            print(f"  [{c.n}] {c.title}  (id: {c.paper_id}, score {c.score:.2f})")
            if c.url:
                print(f"       {c.url}")
    cited = {c.n for c in answer.citations}
    others = [c for c in answer.contexts if c.n not in cited]
    if others:
        print("\nAlso retrieved: " + "; ".join(f"[{c.n}] {c.title[:60]}" for c in others))
    print(f"\nmode: {answer.mode}, {answer.timings_ms.get('total_ms', 0):.0f} ms")


def cmd_ask(args) -> int:
    a = _assistant(args)
    if a.settings.mode == "auto" or not args.no_index:
        a.ensure_index(progress=_progress())
    _prepare_local_model(a)
    question = " ".join(args.question)
    paper_ids = args.paper or None
    if args.json:
        print(json.dumps(a.ask(question, k=args.k, paper_ids=paper_ids).to_dict(), ensure_ascii=False, indent=2))
        return 0
    answer = None
    for piece in a.stream(question, k=args.k, paper_ids=paper_ids):
        if isinstance(piece, str):
            print(piece, end="", flush=True)
        else:
            answer = piece
    print()
    _print_answer(answer, streamed=True, evidence=not args.no_evidence)
    return 0


def cmd_papers(args) -> int:
    a = _assistant(args)
    a.ensure_index(progress=_progress())
    papers = a.papers(args.search)
    if args.json:
        from .types import paper_to_dict

        print(json.dumps([paper_to_dict(p) for p in papers], ensure_ascii=False, indent=2))
        return 0
    for p in papers:
        print(f"{p.id:50s} {p.title}")
    print(f"\n{len(papers)} paper(s)")
    return 0


def cmd_eval(args) -> int:
    from . import evaluation

    return evaluation.cli(args)


def cmd_fit(args) -> int:
    """Fit the extractive planner by cross-validation on eval/ and write rag/data."""
    from .fitting import fit

    a = _assistant(args)
    a.ensure_index(progress=_progress())
    root = Path(__file__).resolve().parents[1]
    out = args.out or Path(__file__).resolve().parent / "data"
    config = fit(a, root, out, folds=args.folds)
    print(f"wrote {out / 'answer_config.json'} and {out / 'type_model.npz'}")
    print("cross-validated: " + ", ".join(f"{k} {v}" for k, v in config.cv.items()))
    return 0


def cmd_serve(args) -> int:
    """The chat UI; on first use the bundled corpus is indexed, with a progress bar."""
    from .ui import launch

    a = _assistant(args)
    print(f"paper-rag: index at {a.store.location}", flush=True)
    report = a.ensure_index(progress=_progress())
    if report is not None:
        print(f"paper-rag: indexed the bundled corpus: {report.summary()}", flush=True)
    _prepare_local_model(a)
    print(f"paper-rag: {a.count()} papers; {a.describe_mode()}", flush=True)
    launch(a, host=args.host, port=args.port, share=False)
    return 0


def cmd_api(args) -> int:
    """The OpenAI-compatible HTTP API (rag/api.py); indexes the bundled corpus on first use."""
    from .api import MODEL_PREFIX, serve

    a = _assistant(args)
    print(f"paper-rag: index at {a.store.location}", flush=True)
    report = a.ensure_index(progress=_progress())
    if report is not None:
        print(f"paper-rag: indexed the bundled corpus: {report.summary()}", flush=True)
    s = a.settings
    host, port = args.host or s.api_host, s.api_port if args.port is None else args.port
    models = ", ".join([MODEL_PREFIX] + [f"{MODEL_PREFIX}-{m}" for m in a.available_modes()])
    print(f"paper-rag: {a.count()} papers; {a.describe_mode()}", flush=True)
    print(f"paper-rag: OpenAI-compatible API at http://{host}:{port}/v1 (models: {models}; "
          f"{'bearer key required (RAG_API_KEY)' if s.api_key is not None else 'no key required'})", flush=True)
    serve(a, host=host, port=port)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rag", description="Ask questions about research paper abstracts; "
                                     "answers cite the papers they come from. Offline by default.")
    parser.add_argument("--data-dir", type=Path, help="index folder (default: RAG_DATA_DIR or ~/.local/share/paper-rag)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("ingest", help="index papers (JSONL, JSON, CSV or the seed text format)")
    p.add_argument("paths", nargs="*", type=Path, help="corpus files; none = the bundled corpus")
    p.add_argument("--bundled", action="store_true", help="also (re)index the bundled corpus")
    p.add_argument("--skip-invalid", action="store_true", help="index the valid records of a file with errors")
    p.add_argument("--rebuild", action="store_true", help="drop every indexed paper first")
    p.set_defaults(func=cmd_ingest)

    p = sub.add_parser("ask", help="answer a question with citations")
    p.add_argument("question", nargs="+")
    p.add_argument("--json", action="store_true", help="print one JSON object (schema in README)")
    p.add_argument("--k", type=int, help="papers to retrieve (default 5)")
    p.add_argument("--mode", choices=["extractive", "openai", "local"],
                   help="answer mode (default: openai if configured, else extractive; local needs the [local] extra)")
    p.add_argument("--paper", action="append", metavar="ID", help="restrict retrieval to this paper id (repeatable)")
    p.add_argument("--no-evidence", action="store_true", help="do not print the quoted sentences under the answer")
    p.add_argument("--no-index", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_ask)

    p = sub.add_parser("papers", help="list the indexed papers")
    p.add_argument("--search", help="only papers whose title or abstract contains TEXT")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_papers)

    p = sub.add_parser("eval", help="grade the assistant on a question set")
    p.add_argument("--set", dest="set_path", type=Path, help="question file (default eval/questions.jsonl); "
                   "PubMedQA's ori_pqal.json is recognised")
    p.add_argument("--mode", choices=["extractive", "openai", "local"])
    p.add_argument("--k", type=int, default=None)
    p.add_argument("--limit", type=int, help="only the first N questions")
    p.add_argument("--concurrency", type=int, default=1)
    p.add_argument("--out", type=Path, help="folder for the JSON, Markdown and PNG reports (default eval/runs)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--compare", nargs=2, type=Path, metavar=("A.json", "B.json"), help="compare two runs")
    p.add_argument("--judge", action="store_true", help="also score answers with an LLM judge (needs an LLM)")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("fit", help="fit the offline answerer's thresholds by cross-validation on eval/")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--out", type=Path, help="folder for answer_config.json and type_model.npz (default rag/data)")
    p.set_defaults(func=cmd_fit)

    p = sub.add_parser("serve", help="start the chat UI")
    p.add_argument("--host", default=None, help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="port (default 7860)")
    p.add_argument("--mode", choices=["extractive", "openai", "local"])
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("api", help="serve an OpenAI-compatible HTTP API (/v1/chat/completions)")
    p.add_argument("--host", default=None, help="bind address (default 127.0.0.1, RAG_API_HOST)")
    p.add_argument("--port", type=int, default=None, help="port (default 8000, RAG_API_PORT)")
    p.add_argument("--mode", choices=["extractive", "openai", "local"], help="the mode of the 'paper-rag' model")
    p.set_defaults(func=cmd_api)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except RagError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        if exc.hint:
            print(f"hint: {exc.hint}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
