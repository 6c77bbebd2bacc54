"""One question in the chat, from typing to the final answer, without gradio.

`ChatController.run` reads a follow-up (without an LLM in the offline modes, by
condensing with the LLM in the openai mode), streams the answer and, when a follow-up
reading finds nothing, answers the question as typed. It yields `Step`s that the Gradio
wiring in `rag.ui.app` turns into component updates, so the logic is testable alone.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from ..conversation import Plan, Turn, condense_question, followup
from ..types import Answer, Paper

log = logging.getLogger(__name__)


@dataclass
class Step:
    """What the chat shows now: a status line, the text so far, or the final answer."""

    text: str = ""
    status: str | None = None
    answer: Answer | None = None
    plan: Plan | None = None
    note: str | None = None
    error: BaseException | None = None


class ChatController:
    def __init__(self, assistant):
        self.assistant = assistant

    def plan(self, question: str, turns: Sequence[Turn], scope: Sequence[Paper], mode: str,
             search_all: bool = False) -> Plan:
        """How the question is searched: as typed (search_all), restricted to a chosen paper,
        or read as a follow-up of the previous turn."""
        if search_all:
            return Plan(question)
        if mode == "openai":
            plan = Plan(question, [p.id for p in scope] or None)
            if turns:
                standalone = condense_question(self.assistant, turns, question)
                if standalone != question:
                    plan = Plan(standalone, plan.paper_ids, f"Follow-up, searched as: {standalone}", True,
                                typed=question)
            if scope:
                plan.note = "Searched only in: " + ", ".join(p.title for p in scope)
            return plan
        return followup(question, turns[-1] if turns else None, scope)

    def run(self, question: str, turns: Sequence[Turn], scope: Sequence[Paper], k: int | None, mode: str,
            llm_options: dict | None = None, search_all: bool = False) -> Iterator[Step]:
        try:
            if mode == "openai" and turns and not search_all:
                yield Step(status="Reading the conversation...")
            plan = self.plan(question, turns, scope, mode, search_all)
            answer: Answer | None = None
            text = ""
            for item in self.assistant.stream(plan.question, k=k, mode=mode, paper_ids=plan.paper_ids,
                                              llm_options=llm_options):
                if isinstance(item, Answer):
                    answer = item
                else:
                    text += item
                    yield Step(text=text, plan=plan)
            note = plan.note
            if answer is not None and answer.abstained and plan.followup and mode != "openai":
                # The follow-up reading found nothing: answer the question as typed instead.
                retry = self.assistant.ask(question, k=k, mode=mode)
                if not retry.abstained:
                    answer, note, plan = retry, None, Plan(question)
            yield Step(text=answer.text if answer else text, answer=answer, plan=plan, note=note)
        except Exception as exc:  # every failure becomes a chat message; the app stays usable
            from ..errors import RagError

            if not isinstance(exc, RagError):
                log.exception("answering %r failed", question)
            yield Step(error=exc)


def turn_of(question: str, answer: Answer) -> Turn:
    return Turn(question=question, asked=answer.question, cited_ids=[c.paper_id for c in answer.citations],
                cited_titles=[c.title for c in answer.citations], answer_text=answer.text,
                abstained=answer.abstained)
