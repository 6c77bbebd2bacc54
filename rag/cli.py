"""`rag` on the command line. Heavy modules are imported inside commands so that
`rag --help` stays instant.

Exit codes: 0 done; 1 done in part (an ingest with id conflicts) or an unexpected error
(one `error:` line; RAG_DEBUG=1 shows the traceback); 2 a clear error with a hint (bad
input, settings or index), or bad command-line arguments; 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from .errors import RagError


def _assistant(args):
    from .settings import load_settings

    overrides = {}
    if getattr(args, "mode", None):
        overrides["mode"] = args.mode
    if getattr(args, "k", None) is not None:
        overrides["k"] = args.k
    if getattr(args, "data_dir", None) is not None:
        overrides["data_dir"] = args.data_dir
    settings = load_settings(**overrides)  # before the heavy imports: a bad value fails fast
    if settings.embeddings == "onnx" and getattr(args, "func", None) is not cmd_papers:
        from .minilm import load_async

        load_async(settings.embedding_threads)  # the model loads on a thread while Chroma is imported and opened

    from .assistant import Assistant

    return Assistant(settings)


def _progress():
    from tqdm import tqdm

    return lambda **kw: tqdm(file=sys.stderr, dynamic_ncols=True, **kw)


def _prepare_local_model(a) -> None:
    """In local mode, verify (on first use: assemble, with a progress bar) the model's GGUF
    before the first question, so a missing or damaged model is an error up front."""
    if a.mode == "local":
        a.ensure_local_model(progress=_progress())


def _say(message: str) -> None:
    """One status line on stderr (e.g. "another ingest (pid N) is running; waiting ...")."""
    print(message, file=sys.stderr, flush=True)


def cmd_ingest(args) -> int:
    from .corpus import bundled_corpus_path

    a = _assistant(args)
    paths = list(args.paths)
    if args.bundled or not paths:
        paths.insert(0, bundled_corpus_path())
    report, loaded = a.ingest(paths, progress=_progress(), skip_invalid=args.skip_invalid, replace=args.replace,
                              rebuild=args.rebuild, wait=not args.no_wait, on_wait=_say)
    for err in loaded.errors:
        print(f"skipped: {err.message}", file=sys.stderr)
    for dup in loaded.duplicates:
        print(f"duplicate: {dup}", file=sys.stderr)
    for issue in report.duplicates:
        print(f"duplicate: {issue.describe()}", file=sys.stderr)
    for issue in report.conflicts:
        print(f"conflict: {issue.describe()}", file=sys.stderr)
    print(report.summary())
    print(f"index: {a.store.location} ({a.store.count()} papers)")
    if report.conflicts:
        print(f"error: {len(report.conflicts)} paper(s) not indexed: their id belongs to another indexed paper "
              f"(the rest was indexed)", file=sys.stderr)
        print("hint: give them ids of their own (or no id: one is generated from the title), or rerun with "
              "--replace to replace the indexed papers", file=sys.stderr)
        return 1
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
    from .guard import guard_note

    if note := guard_note(answer.meta):
        print(f"\nnote: {note}")
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
    wrote = None
    if a.settings.mode == "auto" or not args.no_index:
        wrote = a.ensure_index(progress=_progress(), on_wait=_say)
    _EXIT_NOW.wrote_nothing = wrote is None
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
    _EXIT_NOW.wrote_nothing = a.ensure_index(progress=_progress(), on_wait=_say) is None
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
    """`rag eval`: run a question set (or PubMedQA) and write the reports, or compare two runs."""
    from . import eval as ev

    if getattr(args, "compare", None):
        a, b = (ev.load_run(p) for p in args.compare)
        cmp = ev.compare(a, b)
        print(json.dumps(cmp, indent=2, default=str) if args.json else ev.format_compare(cmp))
        return 0
    set_path = (
        Path(args.set_path) if getattr(args, "set_path", None) else ev.default_root() / "eval" / "questions.jsonl"
    )
    if not set_path.is_file():
        raise RagError(f"question set not found: {set_path}", "Pass --set PATH (JSONL, or PubMedQA's ori_pqal.json).")
    if args.limit is not None and args.limit < 1:
        raise RagError("--limit must be at least 1")
    run_obj = _eval_pubmedqa(args, set_path) if ev.is_pubmedqa(set_path) else _eval_questions(args, set_path)
    out_dir = Path(args.out) if getattr(args, "out", None) else ev.default_out_dir(run_obj)
    paths = ev.write_reports(run_obj, out_dir)
    if getattr(args, "json", False):
        print(json.dumps({"summary": run_obj["summary"], "settings_hash": run_obj["settings_hash"],
                          "git_commit": run_obj.get("git_commit"),
                          "files": {k: str(v) for k, v in paths.items()}}, indent=2))
    else:
        print(ev.format_summary(run_obj))
        print("reports: " + ", ".join(str(p) for p in paths.values()))
    return 0


def _eval_pubmedqa(args, set_path: Path) -> dict:
    """PubMedQA is graded for retrieval only, on an index of its own."""
    from . import eval as ev

    base = _assistant(args)
    papers, questions = ev.load_pubmedqa(set_path)
    a = ev.pubmedqa_assistant(base.settings)
    print(f"PubMedQA: {len(papers)} abstracts, {len(questions)} questions; index {a.settings.data_dir} "
          f"(collection '{a.settings.collection}'), retrieval only", file=sys.stderr)
    report, _ = a.ingest(papers=papers, progress=_progress())
    if report.changed:
        print(report.summary(), file=sys.stderr)
    if args.judge:
        print("note: --judge is ignored for PubMedQA (retrieval only)", file=sys.stderr)
    return ev.run_retrieval(a, questions, depth=max(10, args.k or 10), limit=args.limit,
                            concurrency=max(1, int(args.concurrency or 1)), source=str(set_path))


def _eval_questions(args, set_path: Path) -> dict:
    from . import eval as ev
    from .errors import ConfigError

    questions = ev.load_questions(set_path)
    if not questions:
        raise RagError(f"{set_path} has no questions")
    a = _assistant(args)
    if args.judge:
        try:
            _ = a.llm
        except ConfigError:
            raise RagError("--judge needs an LLM to grade with, and none is configured",
                           "Set OPENAI_API_KEY (or OPENAI_BASE_URL for a local OpenAI-compatible server); "
                           "the judge uses RAG_LLM_MODEL. Answers can still come from --mode extractive.") from None
    a.ensure_index(progress=_progress())
    gold = {g for q in questions for g in q.gold}
    missing = sorted(gold - a.store.existing_ids(gold))
    if missing:
        print(f"warning: {len(missing)} gold paper(s) are not in the index at {a.store.location} "
              f"(e.g. {missing[0]}); retrieval scores will be low. The set is written for the bundled "
              f"corpus: `rag ingest --bundled`.", file=sys.stderr)
    return ev.run(a, questions, k=args.k, mode=args.mode, limit=args.limit,
                  concurrency=max(1, int(args.concurrency or 1)), judge=args.judge, source=str(set_path),
                  stream=not args.no_stream)


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
    from .ports import check_port
    from .ui import launch

    a = _assistant(args)
    s = a.settings
    check_port(args.host or s.ui_host, s.ui_port if args.port is None else args.port)  # before any indexing
    print(f"paper-rag: index at {a.store.location}", flush=True)
    report = a.ensure_index(progress=_progress(), on_wait=_say)
    if report is not None:
        print(f"paper-rag: indexed the bundled corpus: {report.summary()}", flush=True)
    _prepare_local_model(a)
    print(f"paper-rag: {a.count()} papers; {a.describe_mode()}", flush=True)
    launch(a, host=args.host, port=args.port, share=False)
    return 0


def cmd_api(args) -> int:
    """The OpenAI-compatible HTTP API (rag/api.py); indexes the bundled corpus on first use."""
    from .api import MODEL_PREFIX, serve
    from .ports import check_port

    a = _assistant(args)
    s = a.settings
    host, port = args.host or s.api_host, s.api_port if args.port is None else args.port
    check_port(host, port, env="RAG_API")  # before any indexing
    print(f"paper-rag: index at {a.store.location}", flush=True)
    report = a.ensure_index(progress=_progress())
    if report is not None:
        print(f"paper-rag: indexed the bundled corpus: {report.summary()}", flush=True)
    models = ", ".join([MODEL_PREFIX] + [f"{MODEL_PREFIX}-{m}" for m in a.available_modes()])
    print(f"paper-rag: {a.count()} papers; {a.describe_mode()}", flush=True)
    print(f"paper-rag: OpenAI-compatible API at http://{host}:{port}/v1 (models: {models}; "
          f"{'bearer key required (RAG_API_KEY)' if s.api_key is not None else 'no key required'})", flush=True)
    serve(a, host=host, port=port)
    return 0


def _setting_type(field: str):
    """An argparse type that accepts exactly what the Settings field accepts (its own bounds)."""
    def parse(text: str):
        from typing import Annotated

        from pydantic import TypeAdapter, ValidationError

        from .settings import Settings, allowed_values

        info = Settings.model_fields[field]
        annotation: Any = Annotated[tuple([info.annotation, *info.metadata])] if info.metadata else info.annotation
        try:
            return TypeAdapter(annotation).validate_python(text)
        except ValidationError:
            raise argparse.ArgumentTypeError(f"{text!r}: must be {allowed_values(field)}") from None
    return parse


def _int_at_least(low: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < low:
            raise argparse.ArgumentTypeError(f"{text!r}: must be a whole number, at least {low}")
        return value
    return parse


def _folder(text: str) -> Path:
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return Path(text).expanduser()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rag", description="Ask questions about research paper abstracts; "
                                     "answers cite the papers they come from. Offline by default.",
                                     epilog="RAG_DEBUG=1 shows the traceback of an unexpected error.")
    parser.add_argument("--data-dir", type=_folder, help="index folder (default: RAG_DATA_DIR or "
                                                         "~/.local/share/paper-rag)")
    sub = parser.add_subparsers(dest="command", required=True)
    k_type = _setting_type("k")

    p = sub.add_parser("ingest", help="index papers (JSONL, JSON, CSV or the seed text format)")
    p.add_argument("paths", nargs="*", type=Path, help="corpus files; none = the bundled corpus")
    p.add_argument("--bundled", action="store_true", help="also (re)index the bundled corpus")
    p.add_argument("--skip-invalid", action="store_true", help="index the valid records of a file with errors")
    p.add_argument("--rebuild", action="store_true", help="drop every indexed paper first")
    p.add_argument("--replace", action="store_true",
                   help="let a paper replace the indexed paper with the same id and another title "
                        "(otherwise that is reported as a conflict and skipped)")
    p.add_argument("--no-wait", action="store_true",
                   help="fail at once if another ingest is writing to the index (default: wait for it)")
    p.set_defaults(func=cmd_ingest)

    p = sub.add_parser("ask", help="answer a question with citations")
    p.add_argument("question", nargs="+")
    p.add_argument("--json", action="store_true", help="print one JSON object (schema in README)")
    p.add_argument("--k", type=k_type, help="papers to retrieve, 1-50 (default 5)")
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
    p.add_argument("--k", type=k_type, default=None, help="papers to retrieve, 1-50")
    p.add_argument("--limit", type=_int_at_least(1), help="only the first N questions")
    p.add_argument("--concurrency", type=_int_at_least(1), default=1)
    p.add_argument("--out", type=Path, help="folder for the JSON, Markdown and PNG reports (default eval/runs)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--compare", nargs=2, type=Path, metavar=("A.json", "B.json"), help="compare two runs")
    p.add_argument("--judge", action="store_true", help="also score answers with an LLM judge (needs an LLM)")
    p.add_argument("--no-stream", action="store_true",
                   help="ask for whole answers (one plain request to the LLM per question) instead of streaming")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("fit", help="fit the offline answerer's thresholds by cross-validation on eval/")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--out", type=Path, help="folder for answer_config.json and type_model.npz (default rag/data)")
    p.set_defaults(func=cmd_fit)

    p = sub.add_parser("serve", help="start the chat UI")
    p.add_argument("--host", default=None, help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=_setting_type("ui_port"), default=None,
                   help="port, 0-65535 (default 7860; 0 = any free port)")
    p.add_argument("--mode", choices=["extractive", "openai", "local"])
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("api", help="serve an OpenAI-compatible HTTP API (/v1/chat/completions)")
    p.add_argument("--host", default=None, help="bind address (default 127.0.0.1, RAG_API_HOST)")
    p.add_argument("--port", type=int, default=None, help="port (default 8000, RAG_API_PORT)")
    p.add_argument("--mode", choices=["extractive", "openai", "local"], help="the mode of the 'paper-rag' model")
    p.set_defaults(func=cmd_api)
    return parser


class _WarningLine(logging.Handler):
    """Warnings of the `rag` logger as one `warning: ...` line on stderr."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            print(f"warning: {record.getMessage()}", file=sys.stderr, flush=True)
        except Exception:  # noqa: BLE001 - logging must never be the thing that fails
            self.handleError(record)


def _show_warnings() -> None:
    logger = logging.getLogger("rag")
    if not any(isinstance(h, _WarningLine) for h in logger.handlers):
        handler = _WarningLine(level=logging.WARNING)
        logger.addHandler(handler)
        logger.propagate = False  # once, not again through the root logger's last-resort handler
    if logger.level == logging.NOTSET or logger.level > logging.WARNING:
        logger.setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _show_warnings()
    debug = os.environ.get("RAG_DEBUG", "").strip().lower() not in ("", "0", "false", "no")
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
    except BrokenPipeError:  # the reader went away (`rag papers | head`): not an error of ours
        _drop_stdout()
        return 0
    except Exception as exc:  # the last safety net: one line, never a traceback (unless RAG_DEBUG)
        if debug:
            raise
        text = " ".join(str(exc).split())[:300]
        print(f"error: unexpected {type(exc).__name__}{': ' + text if text else ''}", file=sys.stderr)
        print("hint: this is a bug or an unusual environment; set RAG_DEBUG=1 for the traceback and "
              "report it", file=sys.stderr)
        return 1


class _ExitNow:
    wrote_nothing = False  # set by a read-only command once it knows it wrote nothing


_EXIT_NOW = _ExitNow()


def run() -> None:
    """The `rag` console script. A command that wrote nothing ends with `os._exit` once its
    output is flushed: the interpreter's teardown (Chroma's client, ONNX Runtime's session,
    a thousand modules) took 0.25-0.3 s of a 1.3-1.8 s `rag ask`, and none of it matters when
    nothing was written. Anything that wrote exits normally."""
    rc = main()
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        _drop_stdout()
    if _EXIT_NOW.wrote_nothing:
        logging.shutdown()
        sys.stderr.flush()
        os._exit(rc)
    sys.exit(rc)


def _drop_stdout() -> None:
    """Point stdout at /dev/null, so the interpreter's last flush to a closed pipe is quiet."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


if __name__ == "__main__":
    run()
