"""Question sets: our JSONL files and PubMedQA's `ori_pqal.json` (as papers and questions)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..types import Paper


@dataclass
class Question:
    id: str
    question: str
    type: str
    gold: list[str]
    key_facts: list[str] = field(default_factory=list)
    answer: str = ""
    meta: dict[str, Any] = field(default_factory=dict)
    source: str = ""  # for a rephrasing, the id of the question it rephrases
    style: str = ""  # keyword | imperative | casual | synonym (rephrasings)

    @property
    def group(self) -> str:
        """Rephrasings of one question share a group (for consistency)."""
        return self.source or self.id

    @property
    def answerable(self) -> bool:
        return bool(self.gold)


def load_questions(path: str | Path) -> list[Question]:
    """Our JSONL schema (eval/README.md)."""
    out = []
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                d = json.loads(line)
                out.append(Question(str(d["id"]), d["question"], d.get("type", "unknown"),
                                    [str(g) for g in d.get("gold", [])], list(d.get("key_facts", [])),
                                    d.get("answer", ""), source=str(d.get("source") or ""),
                                    style=str(d.get("style") or "original")))
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                from ..errors import CorpusError

                raise CorpusError(f"not a question record ({type(exc).__name__}: {exc})", file=str(path),
                                  line=n, hint="See eval/README.md for the question schema.") from None
    return out


def is_pubmedqa(path: str | Path) -> bool:
    """PubMedQA's ori_pqal.json: one JSON object keyed by PubMed id."""
    path = Path(path)
    if path.suffix.lower() != ".json" or not path.is_file():
        return False
    with path.open(encoding="utf-8") as fh:
        head = fh.read(4096).lstrip()
    return head.startswith("{") and '"QUESTION"' in head


_AUX = ("do", "does", "did", "is", "are", "was", "were", "can", "could", "should", "will", "would", "has", "have",
        "had", "may", "might", "must")
_PREDICATE_START = re.compile(
    r"^(?:\w+(?:ed|en|ive|able|ible|ful|ous|ent|ant)|associated|related|linked|necessary|effective|useful|"
    r"safe|better|worse|superior|inferior|different|present|available|possible|due|able|likely|sufficient|reliable|"
    r"accurate|common|important|feasible|predictive|more|less|still|really|also|worth|true|a|an)$", re.I)


def as_statement(question: str) -> str:
    """A yes/no question rewritten as the claim it tests, for claim-like retrieval queries:
    'Do mitochondria play a role in ...?' -> 'Mitochondria play a role in ...';
    'Is X associated with Y?' -> 'X is associated with Y'. Rule-based, so approximate
    (the subject ends before the first word that looks like the start of a predicate)."""
    q = question.strip().rstrip("?").strip()
    words_ = q.split()
    if len(words_) < 3 or words_[0].lower() not in _AUX:
        return q
    aux, rest = words_[0].lower(), words_[1:]
    if aux in ("do", "does", "did", "can", "could", "should", "will", "would", "may", "might", "must"):
        out = rest
    else:
        cut = next((i for i in range(1, len(rest)) if _PREDICATE_START.match(rest[i])), None)
        out = rest if cut is None else rest[:cut] + [aux] + rest[cut:]
    text = " ".join(out)
    return text[:1].upper() + text[1:] + "."


def load_pubmedqa(path: str | Path, statements: bool = False,
                  conclusions: bool = False) -> tuple[list[Paper], list[Question]]:
    """Papers and questions from PubMedQA's format; each question's gold is its own abstract.

    The question is not used as the title (it would leak the answer into the index):
    the title is "PubMed <id>" and the text is the CONTEXTS followed by the LONG_ANSWER.
    `statements`: ask each yes/no question as the claim it tests (`as_statement`).
    `conclusions`: a harder claim-retrieval set: the abstract's conclusion (LONG_ANSWER) is
    the query and is left out of the indexed text, so it must be matched by paraphrase.
    """
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        from ..errors import CorpusError

        raise CorpusError("expected one JSON object keyed by PubMed id", file=str(path))
    papers: list[Paper] = []
    questions: list[Question] = []
    for pmid, rec in data.items():
        pmid = str(pmid)
        contexts = rec.get("CONTEXTS") or []
        text = " ".join(str(c).strip() for c in contexts)
        long_answer = str(rec.get("LONG_ANSWER") or "").strip()
        abstract = text if conclusions else f"{text} {long_answer}".strip()
        if not abstract or not str(rec.get("QUESTION") or "").strip():
            continue
        year = rec.get("YEAR")
        papers.append(Paper(id=pmid, title=f"PubMed {pmid}", abstract=abstract,
                            url=f"https://pubmed.ncbi.nlm.nih.gov/{pmid}/",
                            year=int(year) if str(year or "").isdigit() else None))
        asked = long_answer if conclusions else str(rec["QUESTION"]).strip()
        if not asked:
            continue
        questions.append(Question(pmid, as_statement(asked) if statements else asked, "pubmedqa", [pmid], [],
                                  long_answer, meta={"final_decision": rec.get("final_decision")}))
    return papers, questions
