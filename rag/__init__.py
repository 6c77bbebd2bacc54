"""Question answering over research paper abstracts, with cited answers.

`from rag import Assistant` is cheap: models, Chroma and gradio load on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["Answer", "Assistant", "Citation", "Context", "Paper", "Settings"]

if TYPE_CHECKING:
    from .assistant import Assistant
    from .settings import Settings
    from .types import Answer, Citation, Context, Paper


def __getattr__(name: str) -> Any:
    if name == "Assistant":
        from .assistant import Assistant
        return Assistant
    if name == "Settings":
        from .settings import Settings
        return Settings
    if name in ("Answer", "Citation", "Context", "Paper"):
        from . import types
        return getattr(types, name)
    raise AttributeError(f"module 'rag' has no attribute {name!r}")
