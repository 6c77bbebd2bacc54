"""Every threshold and weight of the offline answerer, in one documented object.

The values in `rag/data/answer_config.json` are not set by hand: `rag fit` (see
`rag/fitting.py`) fits them by cross-validation on the evaluation questions and their
rephrasings, and writes the cross-validated figures beside them. `RAG_ANSWER_CONFIG`
points at another file.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

from pydantic import BaseModel, Field

from .errors import ConfigError

# Per-sentence features the sentence scorer weighs (computed in rag/planning.py): how close
# the sentence is to the question, how much of what the question asks beyond the paper's
# title it covers, how much it adds, where it sits, and a few words that mark contributions
# and results.
SENTENCE_CUES = ("propos", "introduc", "present", "achiev", "outperform", "experi", "dataset", "result",
                 "show", "demonstr", "use", "base", "train", "evalu", "benchmark", "state", "design", "novel",
                 "framework", "network", "modul", "loss")
SENTENCE_FEATURES = (
    "cos",
    "cos_gap",
    "coverage",
    "focus",
    "novelty",
    "number",
    "number_q",
    "position",
    "first",
    "last",
    "length",
    "local",
    "local_focus",
    "prev_cos",
    "next_cos",
    "prev_local",
    "next_local",
    "residual",
    "top_cos",
    "cos_paper",
    "residual_description",
    "local_description",
    "head",
    "contribution",
    "contribution_several",
    "focus_several",
    "names",
) + tuple(f"cue_{c}" for c in SENTENCE_CUES)
# Per-paper features the paper scorer weighs (computed in rag/planning.py).
PAPER_FEATURES = ("sent_cos", "dense", "coverage", "sent_coverage", "key_coverage", "lexical", "fused",
                  "inv_rank", "names", "named")


class AnswerConfig(BaseModel):
    """Thresholds and weights of the extractive planner (docs: eval/README.md, 'Fitting')."""

    min_similarity: float = Field(0.20, description="Abstain outright when no passage of any retrieved paper is "
                                  "this similar (cosine) to the question.")
    paper_weights: dict[str, float] = Field(
        default_factory=lambda: {
            "sent_cos": 3.0,
            "dense": 3.0,
            "coverage": 3.0,
            "sent_coverage": 1.0,
            "key_coverage": 1.0,
            "lexical": 0.5,
            "fused": 0.5,
            "inv_rank": 0.5,
            "names": 1.0,
            "named": 2.0,
        },
        description="Logistic weights of the per-paper features (PAPER_FEATURES) in P(paper answers the question).",
    )
    paper_bias: float = Field(-5.0, description="Bias of that logistic model.")
    answer_weights: dict[str, float] = Field(
        default_factory=lambda: {"sent_cos": 4.0, "key_coverage": 2.0, "coverage": 2.0},
        description="Logistic weights of the best paper's features in P(the corpus answers the question).")
    answer_bias: float = Field(-4.0, description="Bias of that logistic model.")
    abstain_below: float = Field(0.35, description="Abstain when P(the corpus answers) is below this "
                                 "(unless the question names the paper).")
    list_min: float = Field(0.5, description="Probability a further paper needs to join a list answer.")
    list_ratio: float = Field(0.6, description="... and its probability relative to the best paper's.")
    max_list: int = Field(4, description="Most papers named in a list answer.")
    quantity_similarity: float = Field(0.55, description="A number answers a numeric question when a word near it "
                                       "is at least this similar (cosine) to the asked-for quantity.")
    sentence_weights: dict[str, float] = Field(
        default_factory=lambda: {"cos": 4.0, "coverage": 1.0, "focus": 2.0},
        description="Logistic weights of the per-sentence features (SENTENCE_FEATURES) in P(the sentence "
                    "states what the question asks).")
    sentence_bias: float = Field(-3.0, description="Bias of that logistic model.")
    extra_sentence_min: float = Field(0.3, description="A paper's second and later sentences join the answer only "
                                      "with at least this probability ...")
    word_budget: dict[str, int] = Field(
        default_factory=lambda: {"one": 55, "list": 40, "comparison": 40},
        description="... and while the answer stays within this many words: 'one' for a one-paper answer, "
                    "'list' and 'comparison' per paper.")
    cv: dict[str, float] = Field(default_factory=dict, description="Cross-validated figures of this fit "
                                 "(written by `rag fit`, informational).")

    @classmethod
    def load(cls, path: Path | str | None = None) -> AnswerConfig:
        source = Path(path) if path else Path(str(resources.files("rag") / "data" / "answer_config.json"))
        if not source.exists():
            if path:
                raise ConfigError(f"answer config {source} does not exist",
                                  "Point RAG_ANSWER_CONFIG at a file written by `rag fit`, or unset it.")
            return cls()
        try:
            return cls.model_validate(json.loads(source.read_text(encoding="utf-8")))
        except ValueError as exc:
            raise ConfigError(f"answer config {source} is not valid ({type(exc).__name__})",
                              "Re-create it with `rag fit`, or unset RAG_ANSWER_CONFIG.") from None

    def save(self, path: Path | str) -> None:
        Path(path).write_text(json.dumps(self.model_dump(), indent=2) + "\n", encoding="utf-8")
