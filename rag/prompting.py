"""Prompt files from `prompts/`, shipped inside the wheel as `rag.prompts`.

Loading is strict: a prompt whose placeholders differ from what the code supplies
raises at load time, not as a half-filled prompt at answer time.
"""

from __future__ import annotations

import string
from functools import cache
from importlib import resources

from .errors import ConfigError


@cache
def read_prompt(name: str) -> str:
    try:
        return (resources.files("rag.prompts") / f"{name}.md").read_text(encoding="utf-8")
    except (FileNotFoundError, ModuleNotFoundError):
        raise ConfigError(f"prompt file '{name}.md' is missing from the package",
                          "Reinstall the package (`make install`); prompts ship in rag/prompts.") from None


def placeholders(template: str) -> set[str]:
    return {f for _, f, _, _ in string.Formatter().parse(template) if f}


def load_prompt(name: str, variables: set[str]) -> str:
    text = read_prompt(name)
    found = placeholders(text)
    if found != variables:
        missing, unknown = variables - found, found - variables
        raise ConfigError(f"prompt '{name}.md' does not match the code: "
                          f"missing {sorted(missing) or 'nothing'}, unknown {sorted(unknown) or 'nothing'}")
    return text


def render(name: str, **values: object) -> str:
    """Fill a prompt; every placeholder must be given, and nothing else."""
    return load_prompt(name, set(values)).format(**values)
