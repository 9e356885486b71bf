"""The artifact guard (selmatch.core.artifacts) and the data identity (selmatch.data.identity): what
each command may write where, and the records that bind scores, experts and sweeps to their data."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest
import torch

from selmatch.core.artifacts import ARTIFACTS, artifact_at, check_out
from selmatch.core.config import ConfigError
from selmatch.data.identity import check_data, data_digest, data_identity, tensor_digest
from selmatch.difficulty.scores import ScoreTable
from selmatch.training.experts import write_expert_scores


def _json(path: Path, value: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value))
    return path


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """One artifact of each kind under tmp_path."""
    _json(tmp_path / "search" / "search_state.json", {"config": {}})
    _json(tmp_path / "experts" / "manifest.json", {"kind": "selmatch-experts"})
    _json(tmp_path / "export" / "manifest.json", {"kind": "selmatch-set", "method": "window"})
    (tmp_path / "export" / "labels.csv").write_text("file,label,class,part\n")
    _json(tmp_path / "window" / "manifest.json", {"kind": "selmatch-set", "method": "window"})
    _json(tmp_path / "distilled" / "manifest.json", {"kind": "selmatch-set", "method": "mtt"})
    _json(tmp_path / "sweep" / "sweep.json", {})
    _json(tmp_path / "scores" / "scores.json", {})
    _json(tmp_path / "result.json", {"kind": "selmatch-evaluation"})
    _json(tmp_path / "old-result.json", {"set": "x", "config": {}, "result": {}})
    _json(tmp_path / "coverage.json", {"kind": "selmatch-coverage"})
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("the user's\n")
    return tmp_path


def test_every_kind_is_recognised(tree: Path) -> None:
    found = {p.name: getattr(artifact_at(p), "name", None) for p in sorted(tree.iterdir())}
    assert found == {
        "search": "search",
        "experts": "experts folder",
        "export": "export",
        "window": "window set",
        "distilled": "distilled set",
        "sweep": "window sweep",
        "scores": "score table",
        "result.json": "evaluation result",
        "old-result.json": "evaluation result",
        "coverage.json": "coverage report",
        "mine": None,
    }
    assert {a.name for a in ARTIFACTS.values()} == set(found.values()) - {None}


@pytest.mark.parametrize(
    ("path", "writes", "accepts"),
    [
        ("new-folder", "window set", ()),
        ("window", "window set", ()),  # a rerun
        ("distilled", "distilled set", ()),  # a resume
        ("experts", "score table", ("experts folder",)),  # scores live in the experts folder
        ("scores", "score table", ()),
        ("mine", "window set", ()),  # a folder of the user's own
        ("mine/new", "window set", ()),
        ("result.json", "evaluation result", ()),  # a rerun
        ("old-result.json", "evaluation result", ()),  # written before the kind was kept
        ("window/coverage.json", "coverage report", ()),  # coverage's default place
        ("distilled/result.json", "evaluation result", ()),
        ("search", "search", ()),
    ],
)
def test_what_a_command_may_write(tree: Path, path: str, writes: str, accepts: tuple) -> None:
    check_out(tree / path, writes, accepts=accepts)


@pytest.mark.parametrize(
    ("path", "writes", "says"),
    [
        ("experts", "window set", "is an experts folder (written by selmatch experts)"),
        ("distilled", "window set", "is a distilled set"),
        ("window", "distilled set", "is a window set"),
        ("export", "distilled set", "is an export"),
        ("sweep", "experts folder", "is a window sweep"),
        ("search", "distilled set", "is a search"),
        ("scores", "experts folder", "is a score table"),
        ("coverage.json", "evaluation result", "is a coverage report"),
        ("mine/notes.txt", "evaluation result", "is a file but not an evaluation result"),
        ("distilled/manifest.json", "evaluation result", "is a file of a distilled set"),
        ("experts/expert_3.safetensors", "coverage report", "is a file of an experts folder"),
        ("experts/window", "window set", "lies inside an experts folder"),
        ("search/sets/ipc10", "distilled set", "lies inside a search"),
        ("search/again", "search", "lies inside a search"),
    ],
)
def test_what_a_command_may_not_write(tree: Path, path: str, writes: str, says: str) -> None:
    with pytest.raises(ConfigError, match="^--out .*" + re.escape(says)):
        check_out(tree / path, writes)


def test_the_data_digest_follows_every_pixel_and_label(fashion) -> None:
    before = data_identity(fashion)
    assert before["train_size"] == len(fashion.train_labels) and len(before["digest"]) == 16
    images = fashion.train_images.clone()
    images[-1, 0, -1, -1] ^= 1
    changed = dataclasses.replace(fashion, train_images=images)
    assert data_digest(changed) != before["digest"]
    labels = fashion.test_labels.clone()
    labels[0] = (labels[0] + 1) % 10
    assert data_digest(dataclasses.replace(fashion, test_labels=labels)) != before["digest"]
    check_data(before, fashion, "x")  # the same data passes
    check_data(None, changed, "x")  # a record from before the digest was kept
    with pytest.raises(ConfigError, match=r"^--scores s was made from fashion-mnist .*digest"):
        check_data(before, changed, "--scores s was")
    assert tensor_digest(torch.arange(3)) != tensor_digest(torch.arange(3).float())


def test_a_score_table_is_bound_to_its_data(fashion, tmp_path: Path) -> None:
    size = len(fashion.train_labels)
    table = ScoreTable(
        {"cscore": torch.zeros(size)},
        {"cscore": False},
        {"dataset": fashion.name, "data": data_identity(fashion)},
    )
    assert table.check_data("--scores", tmp_path, fashion) is table
    other = dataclasses.replace(fashion, train_labels=fashion.train_labels.roll(1))
    with pytest.raises(ConfigError, match="made from"):
        table.check_data("--scores", tmp_path, other)
    short = ScoreTable({"cscore": torch.zeros(size - 1)}, {"cscore": False}, {})
    with pytest.raises(ConfigError, match=f"scores {size - 1} images, .* holds {size}"):
        short.check_data("--scores", tmp_path, fashion)


def test_rewriting_the_expert_scores_keeps_an_imported_score(tmp_path: Path, fashion) -> None:
    from safetensors.torch import save_file

    from selmatch.training.experts import ExpertConfig

    size = len(fashion.train_labels)
    ScoreTable(
        {"cscore": torch.arange(size, dtype=torch.float64)},
        {"cscore": False},
        {"dataset": fashion.name},
    ).save(tmp_path)
    scores = {"forgetting": torch.ones(size), "el2n": torch.zeros(size)}
    save_file(scores, str(tmp_path / "expert_0.safetensors"))
    config = ExpertConfig(dataset=fashion.name)
    table = write_expert_scores(tmp_path, config, data_identity(fashion))
    assert set(table.scores) == {"cscore", "forgetting", "el2n"}
    again = ScoreTable.load(tmp_path)
    assert torch.equal(again.scores["cscore"], torch.arange(size, dtype=torch.float64))
    assert again.info["data"] == data_identity(fashion)


def test_consistency_networks_resume_only_on_their_data(tmp_path: Path, fashion) -> None:
    from selmatch.selection.consistency import ConsistencyConfig, prepare_directory, write_manifest

    config = ConsistencyConfig(dataset=fashion.name)
    other = {**data_identity(fashion), "digest": "0" * 16}
    write_manifest(tmp_path, config, {"0": 1.0}, other)
    with pytest.raises(ConfigError, match="holds consistency networks made from"):
        prepare_directory(tmp_path, config, fashion)
    write_manifest(tmp_path, config, {"0": 1.0}, data_identity(fashion))
    assert prepare_directory(tmp_path, config, fashion) == {"0": 1.0}
