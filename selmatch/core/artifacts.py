"""The kinds of artifact the commands write, how each is recognised on disk, and the one check
every command makes of its ``--out`` before any work: it never writes into, over or inside an
artifact of another kind.

A folder artifact is recognised by its marker file (a manifest whose ``kind`` says what it is,
or a file only that command writes); a file artifact (an evaluation result, a coverage report)
by the ``kind`` in its JSON. A command may write

- a folder that does not exist yet, or an empty one;
- a folder artifact of one of the kinds it accepts (its own kind: a rerun, a resume, more
  experts; ``selmatch scores`` also writes into an experts folder, which holds the scores);
- a file that does not exist, unless it is a file an artifact reserves (its manifest, its
  tensors), or an existing file of its own kind.

Anything else (a path equal to, or inside, another kind of artifact, or one of its files) is
refused with one line naming ``--out`` and the artifact. A new kind is one :class:`Artifact` in
:data:`ARTIFACTS`.
"""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from selmatch.core.config import ConfigError

#: the ``kind`` of an evaluation result and of a coverage report (their JSON's first key)
EVALUATION_KIND = "selmatch-evaluation"
COVERAGE_KIND = "selmatch-coverage"
#: the file that marks a search's folder (tune/results/record.py's state)
SEARCH_STATE = "search_state.json"


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return None


def _kind_of(path: Path) -> str | None:
    data = _json(path) if path.is_file() else None
    return data.get("kind") if isinstance(data, dict) else None


def _set_method(folder: Path) -> str | None:
    path = folder / "manifest.json"
    manifest = _json(path) if path.is_file() else None
    if not isinstance(manifest, dict) or manifest.get("kind") != "selmatch-set":
        return None
    return str(manifest.get("method"))


def _is_evaluation(path: Path) -> bool:
    data = _json(path) if path.suffix == ".json" else None
    if not isinstance(data, dict):
        return False
    # results written before the kind was kept: evaluate's own keys
    return data.get("kind") == EVALUATION_KIND or {"set", "config", "result"} <= data.keys()


@dataclass(frozen=True)
class Artifact:
    """One kind of artifact: its name, the command that writes it, how to recognise it and the
    file names it reserves (glob patterns: a file output may not take them inside it)."""

    name: str
    command: str
    recognise: Callable[[Path], bool]
    reserved: tuple[str, ...] = ()
    folder: bool = True

    def describe(self) -> str:
        return f"{self.name} (written by {self.command})"


# Recognised in this order: the first that matches names a path.
ARTIFACTS: dict[str, Artifact] = {
    a.name: a
    for a in (
        Artifact(
            "search",
            "python tune/search_alpha_beta.py",
            lambda p: (p / SEARCH_STATE).is_file(),
            (SEARCH_STATE, "best_hparams.csv"),
        ),
        Artifact(
            "experts folder",
            "selmatch experts",
            lambda p: _kind_of(p / "manifest.json") == "selmatch-experts",
            (
                "manifest.json",
                "expert_*.safetensors",
                "indices.safetensors",
                "scores.safetensors",
                "scores.json",
                "consistency.json",
            ),
        ),
        Artifact(
            "export",
            "selmatch export",
            lambda p: (p / "labels.csv").is_file() and _set_method(p) is not None,
            ("manifest.json", "labels.csv"),
        ),
        Artifact(
            "window set",
            "selmatch window",
            lambda p: _set_method(p) == "window",
            ("manifest.json", "set.safetensors", "indices.csv"),
        ),
        Artifact(
            "distilled set",
            "selmatch distill",
            lambda p: _set_method(p) is not None,
            ("manifest.json", "set.safetensors", "loss.csv", "checkpoint"),
        ),
        Artifact(
            "window sweep",
            "selmatch window-sweep",
            lambda p: (p / "sweep.json").is_file(),
            ("sweep.json", "sweep.csv"),
        ),
        Artifact(
            "score table",
            "selmatch scores",
            lambda p: (p / "scores.json").is_file() or (p / "consistency.json").is_file(),
            ("scores.json", "scores.safetensors", "consistency.json"),
        ),
        Artifact(
            "evaluation result",
            "selmatch evaluate",
            _is_evaluation,
            folder=False,
        ),
        Artifact(
            "coverage report",
            "selmatch coverage",
            lambda p: _kind_of(p) == COVERAGE_KIND,
            folder=False,
        ),
    )
}


def artifact_at(path: Path) -> Artifact | None:
    """The kind of artifact ``path`` is, or None."""
    if path.is_dir():
        return next((a for a in ARTIFACTS.values() if a.folder and a.recognise(path)), None)
    if path.is_file():
        return next((a for a in ARTIFACTS.values() if not a.folder and a.recognise(path)), None)
    return None


def _enclosing(path: Path) -> tuple[Path, Artifact] | None:
    """The nearest folder above ``path`` that is an artifact, with its kind."""
    for parent in path.parents:
        kind = artifact_at(parent) if parent.is_dir() else None
        if kind is not None:
            return parent, kind
    return None


def check_out(
    path: Path | None, writes: str, *, accepts: tuple[str, ...] = (), flag: str = "--out"
) -> None:
    """Refuse, before any work, an output ``path`` where the command (which writes ``writes``,
    a key of :data:`ARTIFACTS`) would overwrite or mix with an artifact of another kind.
    ``accepts`` names further kinds it may write into (``selmatch scores``: experts folders)."""
    if path is None:
        return
    mine = ARTIFACTS[writes]
    allowed = (writes, *accepts)
    path = Path(path)
    here = artifact_at(path.resolve()) if path.exists() else None
    if here is not None and here.name not in allowed:
        raise ConfigError(
            f"{flag} {path} is {_a(here)}; {mine.command} would overwrite it: pick another {flag}"
        )
    enclosing = _enclosing(path.resolve())
    if enclosing is not None:
        folder, kind = enclosing
        name = path.resolve().relative_to(folder).parts[0]
        if any(fnmatch.fnmatch(name, pattern) for pattern in kind.reserved):
            raise ConfigError(
                f"{flag} {path} is a file of {_a(kind)} ({_relative(folder)}); {mine.command} "
                f"would overwrite it: pick another {flag}"
            )
        if mine.folder:
            raise ConfigError(
                f"{flag} {path} lies inside {_a(kind)} ({_relative(folder)}); pick an {flag} "
                "outside it"
            )
    if not mine.folder and path.is_file() and here is None:
        raise ConfigError(
            f"{flag} {path} is a file but not {_a(mine)}; {mine.command} would overwrite it: "
            f"pick another {flag}"
        )


def _a(kind: Artifact) -> str:
    article = "an" if kind.name[0] in "aeiou" else "a"
    return f"{article} {kind.describe()}"


def _relative(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)
