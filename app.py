"""`make run`: the chat UI on the bundled corpus, offline, at http://127.0.0.1:7860.

On the first run the bundled papers are indexed (a progress bar shows on the terminal).
Configuration comes from RAG_* variables (see README): RAG_DATA_DIR, RAG_UI_HOST, RAG_UI_PORT,
RAG_UI_AUTH=user:password, RAG_MAX_UPLOAD_MB; OPENAI_API_KEY or OPENAI_BASE_URL enable an LLM.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")


def main() -> int:
    from tqdm import tqdm

    from rag import Assistant
    from rag.errors import RagError

    try:
        assistant = Assistant()
        print(f"paper-rag: index at {assistant.store.location}", flush=True)
        report = assistant.ensure_index(progress=tqdm)
        if report is not None:
            print(f"paper-rag: indexed the bundled corpus: {report.summary()}", flush=True)
        print(f"paper-rag: {assistant.store.count()} papers; {assistant.describe_mode()}", flush=True)
        from rag.ui import launch

        launch(assistant)
    except RagError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        if exc.hint:
            print(f"  hint: {exc.hint}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
