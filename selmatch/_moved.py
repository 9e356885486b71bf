"""The module paths before the layout by stage (docs/design.md, "Layout"), kept importable.

``selmatch.distill`` is now ``selmatch.distillation.distill``, ``selmatch_tune.search`` is
``selmatch_tune.flow.search``, and so on: :data:`MOVED` lists them all. Importing an old path
gives the very module at its new one (the same object, so a class is the same class), which
keeps a user's ``from selmatch.distill import DistillConfig`` working and lets Tune restore an
experiment pickled by an earlier version (its searcher and callbacks name the old paths).
:func:`install` is called by ``selmatch/__init__.py``; it is idempotent.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
from types import ModuleType

#: old module path → its module's path now
MOVED = {
    "selmatch.config": "selmatch.core.config",
    "selmatch.io": "selmatch.core.io",
    "selmatch.progress": "selmatch.core.progress",
    "selmatch.migrate": "selmatch.core.migrate",
    "selmatch.artifacts": "selmatch.core.artifacts",
    "selmatch.plots": "selmatch.core.plots",
    "selmatch.identity": "selmatch.data.identity",
    "selmatch.score_kinds": "selmatch.difficulty.score_kinds",
    "selmatch.scores": "selmatch.difficulty.scores",
    "selmatch.models": "selmatch.training.models",
    "selmatch.augment": "selmatch.training.augment",
    "selmatch.train": "selmatch.training.train",
    "selmatch.params": "selmatch.training.params",
    "selmatch.experts": "selmatch.training.experts",
    "selmatch.synthetic": "selmatch.sets.synthetic",
    "selmatch.export": "selmatch.sets.export",
    "selmatch.window": "selmatch.selection.window",
    "selmatch.initial": "selmatch.selection.initial",
    "selmatch.coverage": "selmatch.selection.coverage",
    "selmatch.consistency": "selmatch.selection.consistency",
    "selmatch.matching": "selmatch.distillation.matching",
    "selmatch.levers": "selmatch.distillation.levers",
    "selmatch.seqmatch": "selmatch.distillation.seqmatch",
    "selmatch.target": "selmatch.distillation.target",
    "selmatch.methods": "selmatch.distillation.methods",
    "selmatch.distill": "selmatch.distillation.distill",
    "selmatch.evaluate": "selmatch.evaluation.evaluate",
    "selmatch.sweep": "selmatch.evaluation.sweep",
    "selmatch_tune.phase_kinds": "selmatch_tune.settings.phase_kinds",
    "selmatch_tune.config": "selmatch_tune.settings.config",
    "selmatch_tune.presets": "selmatch_tune.settings.presets",
    "selmatch_tune.record": "selmatch_tune.results.record",
    "selmatch_tune.outputs": "selmatch_tune.results.outputs",
    "selmatch_tune.costs": "selmatch_tune.results.costs",
    "selmatch_tune.tracking": "selmatch_tune.results.tracking",
    "selmatch_tune.tracking_uri": "selmatch_tune.results.tracking_uri",
    "selmatch_tune.network": "selmatch_tune.cluster.network",
    "selmatch_tune.devices": "selmatch_tune.cluster.devices",
    "selmatch_tune.storage": "selmatch_tune.cluster.storage",
    "selmatch_tune.ray_cluster": "selmatch_tune.cluster.ray_cluster",
    "selmatch_tune.concave": "selmatch_tune.flow.concave",
    "selmatch_tune.searcher": "selmatch_tune.flow.searcher",
    "selmatch_tune.simulate": "selmatch_tune.flow.simulate",
    "selmatch_tune.precompute": "selmatch_tune.flow.precompute",
    "selmatch_tune.trials": "selmatch_tune.flow.trials",
    "selmatch_tune.phases": "selmatch_tune.flow.phases",
    "selmatch_tune.slots": "selmatch_tune.flow.slots",
    "selmatch_tune.finals": "selmatch_tune.flow.finals",
    "selmatch_tune.ipc_search": "selmatch_tune.flow.ipc_search",
    "selmatch_tune.search": "selmatch_tune.flow.search",
}


class _Alias(importlib.abc.Loader):
    def __init__(self, new: str) -> None:
        self.new = new

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        return importlib.import_module(self.new)

    def exec_module(self, module: ModuleType) -> None:
        """The module ran when it was imported under its own path."""


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(
        self, fullname: str, path: object = None, target: object = None
    ) -> importlib.machinery.ModuleSpec | None:
        new = MOVED.get(fullname)
        return None if new is None else importlib.util.spec_from_loader(fullname, _Alias(new))


def install() -> None:
    if not any(isinstance(finder, _Finder) for finder in sys.meta_path):
        sys.meta_path.append(_Finder())
