"""The one migration of saved files: each kind's current schema and its steps from older ones.

A file records its schema in ``schema_version`` (a set's and an experts folder's manifest in
their ``format_version``, the key they always had); a file without it is schema 0. Its reader
calls :func:`migrate` first and so only ever sees the current shape; its writer writes
:attr:`FileKind.version`. To change a format: bump the kind's version and append one step
``v → v + 1`` (a function taking and returning the JSON dict) to its ``steps``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from selmatch.core.config import SelmatchError

Step = Callable[[dict[str, Any]], dict[str, Any]]


class NewerFileError(SelmatchError):
    """A file written by a newer selmatch than this one (or with a version that is not one)."""


@dataclass(frozen=True)
class FileKind:
    """One kind of saved file: its name, the key holding its schema and its steps
    (``steps[v]`` turns schema ``v`` into ``v + 1``; the current schema is their number)."""

    name: str
    steps: tuple[Step, ...]
    key: str = "schema_version"

    @property
    def version(self) -> int:
        return len(self.steps)


def _unchanged(data: dict[str, Any]) -> dict[str, Any]:
    return data


def _record_0_to_1(data: dict[str, Any]) -> dict[str, Any]:
    """A search record from before ``started`` had started (it was written after the
    precompute); one from before the baselines were candidates won with its window and its α
    phase's best."""
    data.setdefault("started", True)
    for entry in (data.get("ipcs") or {}).values():
        alpha = entry.get("alpha") if isinstance(entry, dict) else None
        if isinstance(alpha, dict) and "best" in alpha and entry.get("winner") is None:
            entry["winner"] = {"init": "window", "alpha": alpha["best"], "candidate": "alpha"}
    return data


def _checkpoint_0_to_1(data: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint from before inputs were recorded (``None``: not known, not checked) or the
    stages' learned lrs (only one-stage runs wrote none)."""
    data.setdefault("inputs", None)
    data.setdefault("stage_lrs", [])
    return data


#: ``OUT/search_state.json`` of a search (:class:`selmatch_tune.results.record.SearchRecord`)
SEARCH_RECORD = FileKind("search record", (_record_0_to_1,))
#: a saved set's ``manifest.json`` (:mod:`selmatch.sets.synthetic`); format 0 had the same keys
SET_MANIFEST = FileKind("set manifest", (_unchanged,), key="format_version")
#: an experts folder's ``manifest.json`` (:mod:`selmatch.training.experts`)
EXPERTS_MANIFEST = FileKind("experts manifest", (_unchanged,), key="format_version")
#: a distillation checkpoint's ``state.json`` (:mod:`selmatch.distillation.distill`)
CHECKPOINT = FileKind("distillation checkpoint", (_checkpoint_0_to_1,))

KINDS = {kind.name: kind for kind in (SEARCH_RECORD, SET_MANIFEST, EXPERTS_MANIFEST, CHECKPOINT)}


def migrate(kind: FileKind | str, data: dict[str, Any], where: str | Path) -> dict[str, Any]:
    """``data`` (a file of ``kind`` read from ``where``) in the current shape, with the current
    version under the kind's key; ``data`` itself is left as it was. A file from a newer
    selmatch, or whose version is not an integer, is a one-line :class:`NewerFileError`."""
    kind = KINDS[kind] if isinstance(kind, str) else kind
    version = data.get(kind.key, 0)
    if not isinstance(version, int) or isinstance(version, bool) or version < 0:
        raise NewerFileError(f"{where}: {kind.key} must be an integer ≥ 0, got {version!r}")
    if version > kind.version:
        raise NewerFileError(
            f"{where} was written by a newer selmatch (schema {version}); upgrade to read it"
        )
    if version == kind.version:
        return data
    data = copy.deepcopy(data)
    for step in kind.steps[version:]:
        data = step(data)
    data[kind.key] = kind.version
    return data
