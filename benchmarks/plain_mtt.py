"""The plain reference the distillation benchmark measures against.

A straightforward trajectory-matching step as research code writes it (the original MTT
code's structure): every student step gets its own ``nn.Module`` copy into which the current
(non-leaf) parameters are put, the whole synthetic set is one leaf tensor that requires
gradients (frozen images included; their gradient is thrown away afterwards), the graph of
all N steps is kept and one backward pass gives the gradients. Same plan (batches and
augmentation draws) as :mod:`selmatch.distillation.matching`, so the results must agree.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from selmatch.distillation.matching import MatchResult, StudentPlan, SyntheticTensors
from selmatch.training.augment import apply_dsa
from selmatch.training.params import ParamLayout


def _put_parameters(module: nn.Module, layout: ParamLayout, flat: torch.Tensor) -> None:
    for name, value in layout.unflatten(flat).items():
        owner_name, _, attribute = name.rpartition(".")
        owner = module.get_submodule(owner_name) if owner_name else module
        del owner._parameters[attribute]
        setattr(owner, attribute, value)


def plain_match(
    model: nn.Module,
    layout: ParamLayout,
    start: torch.Tensor,
    target: torch.Tensor,
    synthetic: SyntheticTensors,
    syn_lr: torch.Tensor,
    plan: StudentPlan,
) -> MatchResult:
    images = torch.cat([synthetic.frozen, synthetic.learnable.detach()]).requires_grad_(True)
    params = [start.detach().clone().requires_grad_(True)]
    for batch, draw in zip(plan.batches, plan.draws, strict=True):
        student = copy.deepcopy(model).train()
        _put_parameters(student, layout, params[-1])
        x = images[batch]
        if draw is not None:
            x = apply_dsa(x, draw)
        loss = F.cross_entropy(student(x), synthetic.labels[batch])
        (grad,) = torch.autograd.grad(loss, params[-1], create_graph=True)
        params.append(params[-1] - syn_lr * grad)
    distance = (start - target).square().sum()
    loss = (params[-1] - target).square().sum() / distance
    grad_images, grad_lr = torch.autograd.grad(loss, [images, syn_lr])
    return MatchResult(float(loss.detach()), grad_images[len(synthetic.frozen) :], grad_lr)
