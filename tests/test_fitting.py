"""`rag fit`: the small learners, grouped cross-validation, and the shipped config."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rag.fitting import fit_listwise, fit_logistic, tuning_pool
from rag.tuning import AnswerConfig

ROOT = Path(__file__).resolve().parents[1]


def test_logistic_regression_learns_a_separable_rule():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 3))
    y = (x[:, 0] - 2 * x[:, 2] > 0).astype(float)
    w, b = fit_logistic(x, y, l2=1e-4)
    assert ((x @ w + b > 0) == (y > 0)).mean() > 0.95
    assert w[0] > 0 and w[2] < 0 and abs(w[1]) < abs(w[0])


def test_listwise_ranking_puts_the_labelled_row_first():
    rng = np.random.default_rng(1)
    x, y, spans = [], [], []
    for _ in range(60):  # groups of 6 rows; the labelled one has the largest feature 1
        g = rng.normal(size=(6, 2))
        hit = int(np.argmax(g[:, 1]))
        spans.append((len(x), len(x) + 6))
        x.extend(g)
        y.extend(float(i == hit) for i in range(6))
    w = fit_listwise(np.array(x), np.array(y), spans)
    assert w[1] > 0 and abs(w[0]) < w[1]


def test_the_tuning_pool_keeps_held_out_questions_out():
    pool = tuning_pool(ROOT)
    ids = {q.id for q in pool}
    assert not any(i.startswith(("h", "b")) for i in ids)
    assert len([q for q in pool if "-" not in q.id]) == 104 and len(pool) == 104 * 5
    # a rephrasing shares its source's group, so cross-validation never splits them
    assert all(q.group == q.id.split("-")[0] for q in pool)


def test_the_shipped_config_carries_its_cross_validated_figures():
    config = AnswerConfig.load()
    for key in ("citation_precision", "false_abstention_rate", "abstention_rate", "key_fact_recall",
                "key_facts_in_40_words", "median_words", "type_accuracy"):
        assert key in config.cv
    assert config.cv["false_abstention_rate"] <= 0.03 and config.cv["citation_precision"] >= 0.95
    assert set(config.paper_weights) and set(config.sentence_weights) and set(config.answer_weights)


def test_a_config_file_that_does_not_exist_is_a_clear_error(tmp_path):
    import pytest

    from rag.errors import ConfigError

    with pytest.raises(ConfigError, match="does not exist"):
        AnswerConfig.load(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid"):
        AnswerConfig.load(tmp_path / "bad.json")
