"""The Gradio chat UI: streamed, cited answers beside their sources; a corpus browser.

`create_app(assistant)` builds the `gr.Blocks`; `launch(assistant, host, port, share)` serves it
(127.0.0.1:7860 by default, with a login when RAG_UI_AUTH="user:password"). The package is
split by concern: `render` (what is shown: pure functions, no gradio), `chat` (one question's
life, no gradio) and `app` (layout and wiring). Only `app` imports gradio, and `import rag`
imports none of this.
"""

from __future__ import annotations

from ..conversation import Plan, Turn, condense_question, followup, is_elliptical
from .app import ChatApp, RagBlocks, available_modes, check_port, create_app, gr, launch
from .render import (
    EXAMPLES,
    answer_markdown,
    chat_text,
    corpus_topics,
    evidence_message,
    final_message,
    highlight,
    mode_html,
    overview_markdown,
    paper_html,
    sources_html,
)

__all__ = [
    "EXAMPLES", "ChatApp", "Plan", "RagBlocks", "Turn", "answer_markdown", "available_modes", "chat_text",
    "check_port", "condense_question", "corpus_topics", "create_app", "evidence_message", "final_message",
    "followup", "gr", "highlight", "is_elliptical", "launch", "mode_html", "overview_markdown", "paper_html",
    "sources_html",
]
