"""The score contract: every kind of :mod:`selmatch.difficulty.score_kinds` has a name, a direction,
a description of how it is made and a cost; what computes it resolves; and the direction the
registry gives is the one its score tables record, so :meth:`ScoreTable.hardness` turns it
the same way (the most reported selection bug of this field is a score read backwards)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from selmatch.difficulty.score_kinds import (
    CONSISTENCY,
    CSCORE,
    REGISTRY,
    EstimatedScore,
    ExpertScore,
    ImportedScore,
    imported_direction,
    of_kind,
)
from selmatch.difficulty.scores import HIGHER_IS_HARDER, ScoreTable, hardness
from selmatch.selection.consistency import SCORE_NAME, ConsistencyConfig, finish, save_network
from selmatch.training.experts import ExpertConfig, write_expert_scores

each_score = pytest.mark.parametrize("score", list(REGISTRY.values()), ids=lambda s: s.name)


@each_score
def test_every_score_keeps_the_contract(score) -> None:
    assert REGISTRY[score.name] is score and isinstance(score.higher_is_harder, bool)
    for text in (score.name, score.description, score.cost, score.made_by):
        assert isinstance(text, str) and text.strip()
    function = score.function()
    assert (function is None) == isinstance(score, ImportedScore)
    assert function is None or callable(function)
    # the hardest sample is the top of the score when higher is harder, else its bottom
    values = torch.tensor([0.3, 0.9, 0.1], dtype=torch.float64)
    turned = hardness(values, score.name)
    assert int(turned.argmax()) == (1 if score.higher_is_harder else 2)


def test_the_registry_gives_every_direction() -> None:
    assert {s.name: s.higher_is_harder for s in REGISTRY.values()} == HIGHER_IS_HARDER
    made = [set(of_kind(kind)) for kind in (ExpertScore, EstimatedScore, ImportedScore)]
    assert set.union(*made) == set(REGISTRY.values()) and sum(map(len, made)) == len(REGISTRY)


def _directions_used(table: ScoreTable, directory) -> dict[str, bool]:
    """The direction ScoreTable.hardness applies to each score of the saved table."""
    loaded = ScoreTable.load(directory)
    used = {}
    for name, values in loaded.scores.items():
        scored = torch.isfinite(values)
        turned = loaded.hardness(name)[scored]
        assert torch.equal(turned.abs(), values[scored].abs())
        used[name] = bool(torch.equal(turned, values[scored].to(torch.float64)))
    return used


def test_expert_tables_record_the_registry_direction(tmp_path) -> None:
    size = 8
    for e in range(2):
        scores = {
            s.name: torch.arange(1.0, size + 1, dtype=torch.float64) + e
            for s in of_kind(ExpertScore)
        }
        save_file(scores, str(tmp_path / f"expert_{e:03d}.safetensors"))
    table = write_expert_scores(tmp_path, ExpertConfig())
    expected = {s.name: s.higher_is_harder for s in of_kind(ExpertScore)}
    assert table.directions == expected == _directions_used(table, tmp_path)


def test_an_estimated_table_records_the_registry_direction(tmp_path, fashion) -> None:
    config = ConsistencyConfig()
    size = len(fashion.train_labels)
    for k in range(config.num_networks):  # each sample held out by two networks
        held_out = torch.arange(k % 2, size, 2)
        probability = torch.linspace(0.05, 0.95, len(held_out), dtype=torch.float64)
        save_network(tmp_path, k, {"held_out": held_out, "probability": probability})
    table = finish(tmp_path, fashion, config)
    assert CONSISTENCY.name == SCORE_NAME and isinstance(CONSISTENCY, EstimatedScore)
    assert table.directions == {CONSISTENCY.name: CONSISTENCY.higher_is_harder}
    assert _directions_used(table, tmp_path) == table.directions


def test_an_import_takes_the_registered_direction() -> None:
    assert imported_direction(CSCORE.name) is CSCORE.higher_is_harder is False
    assert imported_direction("my-score") is True  # unregistered: --hardest high, the default
    assert imported_direction(CONSISTENCY.name) is True  # not an imported kind: as before
