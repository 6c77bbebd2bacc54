"""`make run`: the chat UI on the bundled corpus, offline, at http://127.0.0.1:7860.

The same as `rag serve`: on the first run the bundled papers are indexed (a progress bar
shows on the terminal), then `rag.ui.create_app(assistant)` is launched. Configuration
comes from RAG_* variables (see README): RAG_DATA_DIR, RAG_UI_HOST, RAG_UI_PORT,
RAG_UI_AUTH=user:password, RAG_MAX_UPLOAD_MB; OPENAI_API_KEY or OPENAI_BASE_URL enable an LLM.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

if __name__ == "__main__":
    from rag.cli import main

    sys.exit(main(["serve", *sys.argv[1:]]))
