"""The method contract: every method of :mod:`selmatch.distillation.methods` answers what the
distillation, the command line and the evaluation ask of it. Its initialisation keeps the
initialisation contract (tests/initial_contract.py) with the share it learns and its stages;
it has at least one stage; its manifest extras are plain JSON; its set is evaluated with one
of the training augmentations; an option it does not take is refused by name. A new method
is added to ``REGISTRY`` and to ``spec`` below, and passes the same tests."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from initial_contract import keeps_the_initialisation_contract

from selmatch.core.config import ConfigError, setting_of
from selmatch.distillation.distill import DistillConfig, flat_settings
from selmatch.distillation.methods import (
    METHODS,
    OWN_OPTIONS,
    REGISTRY,
    evaluation_augment,
    find_method,
    method_of,
    saved_set_augment,
)
from selmatch.distillation.target import SetSpec
from selmatch.evaluation.evaluate import EVAL_ORDERS
from selmatch.selection.initial import KINDS
from selmatch.training.augment import AUGMENTATIONS

IPC = 6
#: how a spec uses each option only some methods take
USES = {
    "init": {"init": "random"},
    "merge": {"merge": True},
    "seqmatch_experts": {"seqmatch_experts": "retrained"},
}
each_method = pytest.mark.parametrize("method", list(REGISTRY.values()), ids=lambda m: m.name)


def spec(method, **changes) -> SetSpec:
    """A small valid spec of ``method``: the share it fixes, else α = 0.5; 2 subsets."""
    alpha = 0.5 if method.alpha is None else method.alpha
    return SetSpec(method=method.name, ipc=IPC, beta=0.5, alpha=alpha, subsets=2, **changes)


@pytest.fixture(scope="module")
def hardness(fashion) -> torch.Tensor:
    return torch.rand(len(fashion.train_labels), generator=torch.Generator().manual_seed(0))


@each_method
def test_every_method_keeps_the_contract(method, fashion, fashion_split, hardness) -> None:
    target = spec(method)
    assert method_of(target.method) is method and target.method_kind is method
    init = method.initialisation(target, seed=0)
    assert isinstance(init, KINDS)
    stages = method.stages(target)
    assert stages >= 1 and target.stages == stages
    share = target.alpha if method.alpha is None else method.alpha
    scores = hardness if method.needs_scores(target) else None  # a start without scores
    start = keeps_the_initialisation_contract(
        init, fashion, fashion_split, scores, IPC, int(IPC * share), stages
    )
    extras = method.manifest_extras(target, start, [0.01] * stages, [])
    assert json.loads(json.dumps(extras)) == extras
    assert {"subset_ids", "stage_lrs"} <= set(extras)
    assert method.evaluation_augment(target) in AUGMENTATIONS
    assert method.evaluation_augment(target, "crop_flip") in AUGMENTATIONS
    assert method.eval_orders[0] == EVAL_ORDERS[0] and set(method.eval_orders) <= set(EVAL_ORDERS)
    assert method.lr_init > 0


@each_method
@pytest.mark.parametrize("option", list(OWN_OPTIONS))
def test_an_option_the_method_does_not_take_is_refused_by_name(method, option) -> None:
    flag = "--" + option.replace("_", "-")
    if option in method.options:
        spec(method, **USES[option])
    else:
        with pytest.raises(ConfigError, match=flag):
            spec(method, **USES[option])


def test_the_registry_is_the_method_choices() -> None:
    assert set(USES) == set(OWN_OPTIONS)
    method_field = next(f for f in dataclasses.fields(SetSpec) if f.name == "method")
    assert METHODS == tuple(REGISTRY) == setting_of(method_field).choices
    assert find_method("window") is None and find_method(None) is None
    with pytest.raises(ConfigError, match="--method"):
        method_of("dc")


@each_method
def test_the_learnable_lr_starts_at_the_methods_value(method) -> None:
    target = spec(method)
    resolved = DistillConfig().resolved(target)
    assert resolved.initial_lr == method.lr_init
    # a manifest holding the method's value reads back as the default
    assert DistillConfig.from_dict(flat_settings(target, resolved)).lr_init is None


def test_a_learned_part_is_evaluated_with_combined_augmentation() -> None:
    assert evaluation_augment(0.0) == "dsa" and evaluation_augment(0.0, "crop_flip") == "crop_flip"
    assert evaluation_augment(0.1) == evaluation_augment(1.0, "crop_flip") == "combined"
    assert saved_set_augment(None) == saved_set_augment(torch.zeros(4, dtype=torch.bool)) == "dsa"
    assert saved_set_augment(torch.tensor([False, True])) == "combined"
    selection = SetSpec(method="selmatch", ipc=IPC, alpha=0.0)
    assert selection.method_kind.evaluation_augment(selection) == "dsa"
    mtt = SetSpec(method="mtt", ipc=IPC, alpha=0.0)  # MTT learns every image whatever α says
    assert mtt.method_kind.evaluation_augment(mtt) == "combined"
