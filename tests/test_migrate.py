"""The one migration of saved files: every committed file reads through its reader after it, a
record of the oldest shape becomes what the search writes now, a newer schema is refused in one
line, and a current file migrates to itself."""

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from selmatch.core.migrate import (
    CHECKPOINT,
    EXPERTS_MANIFEST,
    KINDS,
    SEARCH_RECORD,
    SET_MANIFEST,
    NewerFileError,
    migrate,
)
from selmatch.sets.synthetic import _checked_manifest
from selmatch.training.experts import ExpertSet
from selmatch_tune.results.record import STATE, SearchRecord

ROOT = Path(__file__).resolve().parents[1]
COMMITTED = [
    ROOT / line
    for line in subprocess.run(
        ["git", "ls-files", "experiments/results"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    if line.endswith(("search_state.json", "manifest.json"))
]


def _kind_of(path: Path) -> str:
    if path.name == STATE:
        return "record"
    return str(json.loads(path.read_text())["kind"])


def test_the_committed_files_are_found() -> None:
    kinds = [_kind_of(path) for path in COMMITTED]
    assert kinds.count("record") >= 4 and kinds.count("selmatch-experts") >= 2
    assert kinds.count("selmatch-set") >= 60


@pytest.mark.parametrize("path", COMMITTED, ids=lambda p: str(p.relative_to(ROOT / "experiments")))
def test_a_committed_file_reads_through_its_reader(path, tmp_path) -> None:
    kind = _kind_of(path)
    if kind == "record":
        assert SearchRecord.load(path).ipcs
    elif kind == "selmatch-set":
        assert _checked_manifest(json.loads(path.read_text()), path)["format_version"] == 1
    else:
        shutil.copy(path, tmp_path / "manifest.json")
        assert ExpertSet.load(tmp_path).manifest["format_version"] == 1


def _phase(best: float) -> dict:
    point = {"val": 0.5, "test": 0.4, "n": 1}
    curve = {"0.0": point, str(best): point}
    return {"curve": curve, "best": best, "trials": 2, "failed": 0, "grid": [0.0, best]}


def test_a_record_of_the_oldest_shape_becomes_what_the_search_writes(tmp_path) -> None:
    # before ``started`` (it had started) and before the baselines were candidates (no winner)
    oldest = {
        "config": {},
        "ipcs": {"10": {"beta": _phase(0.5), "alpha": _phase(0.7)}, "50": {"beta": _phase(0.1)}},
    }
    (tmp_path / STATE).write_text(json.dumps(oldest))
    record = SearchRecord.load(tmp_path)
    assert record.started and record.ipcs[50].winner is None
    winner = record.ipcs[10].winner
    assert winner is not None and (winner.init, winner.alpha, winner.method) == (
        "window",
        0.7,
        "selmatch",
    )
    assert oldest["ipcs"]["10"].keys() == {"beta", "alpha"}  # the input is left as it was
    record.save(tmp_path / "new")
    written = json.loads((tmp_path / "new" / STATE).read_text())
    assert written == migrate(SEARCH_RECORD, oldest, "oldest")
    assert written["schema_version"] == SEARCH_RECORD.version


def test_a_checkpoint_of_the_oldest_shape_gets_its_unknown_inputs() -> None:
    migrated = migrate(CHECKPOINT, {"config": {}, "stage": 0}, "state.json")
    assert migrated == {
        "config": {},
        "stage": 0,
        "inputs": None,
        "stage_lrs": [],
        "schema_version": 1,
    }


@pytest.mark.parametrize("kind", KINDS.values(), ids=lambda k: k.name)
def test_a_newer_schema_is_refused_in_one_line(kind) -> None:
    newer = {kind.key: kind.version + 1, "config": {}}
    with pytest.raises(NewerFileError) as error:
        migrate(kind, newer, "some/file.json")
    message = str(error.value)
    assert "\n" not in message
    assert message == (
        f"some/file.json was written by a newer selmatch (schema {kind.version + 1}); "
        "upgrade to read it"
    )
    with pytest.raises(NewerFileError, match="must be an integer"):
        migrate(kind, {kind.key: "1"}, "some/file.json")


@pytest.mark.parametrize("kind", KINDS.values(), ids=lambda k: k.name)
def test_migrating_a_current_file_is_the_identity(kind) -> None:
    current = migrate(kind, {"config": {}, "ipcs": {}}, "old.json")
    assert current[kind.key] == kind.version
    assert migrate(kind, current, "current.json") == current


def test_the_readers_refuse_a_newer_file(tmp_path) -> None:
    (tmp_path / STATE).write_text(json.dumps({"schema_version": 99, "config": {}}))
    with pytest.raises(NewerFileError, match="newer selmatch"):
        SearchRecord.load(tmp_path)
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({"kind": "selmatch-experts", "format_version": 99}))
    with pytest.raises(NewerFileError, match=rf"^{manifest} was written by a newer selmatch"):
        ExpertSet.load(tmp_path)
    assert {SET_MANIFEST.key, EXPERTS_MANIFEST.key} == {"format_version"}
