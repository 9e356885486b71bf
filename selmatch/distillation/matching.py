"""The trajectory-matching gradient: one MTT iteration's loss and its gradient with respect to
the learnable synthetic images and the learnable synthetic learning rate.

A student starts from an expert's parameters at epoch ``t`` (θ*_t) and takes N SGD steps
(``n_student_steps``) on mini-batches of the synthetic set, with differentiable augmentation,
step size η (the learnable lr). The loss is

    L = ‖θ̂_{t+N} − θ*_{t+M}‖² / ‖θ*_t − θ*_{t+M}‖²

(MTT's normalisation: the division by the parameter count cancels), written once, in
:func:`matching_loss`, and used by every mode. Two exact ways to get ``∂L/∂images`` and
``∂L/∂η``:

- :func:`unrolled_match` (default): keep the graph of all N steps (``create_graph=True``),
  back-propagate once. Memory grows with N × batch.
- :func:`checkpointed_match` (memory-saving): run the N steps without a graph, keeping only the
  N+1 parameter vectors (a few MB), then walk back one step at a time, rebuilding that step's
  graph and carrying the adjoint λ_n = ∂L/∂θ̂_n:

      λ_N = ∂L/∂θ̂_N   (autograd of :func:`matching_loss` at θ̂_N alone)
      ∂L/∂x_n = −η (∂g_n/∂x_n)ᵀ λ_{n+1},   ∂L/∂η −= g_n · λ_{n+1},   λ_n = λ_{n+1} − η H_n λ_{n+1}

  where g_n is the step's gradient and H_n λ a Hessian-vector product. Peak memory is one
  step's graph whatever N is; the price is one extra first-order pass per step.

Both only track gradients for the *learnable* images (``D_distill``): frozen images
(``D_select``) take part in every student step but get no gradient, so no input-gradient work
is spent on them. Every random choice of an iteration (batches, augmentation draws) is made
up front in a :class:`StudentPlan`, so both modes (and the benchmark's plain reference) see
exactly the same steps.

Several trajectories per iteration (:func:`match_trajectories`, ``--trajectories-per-step E``):
E students, each from its own θ*_t (its own expert and start epoch) with its own plan, run in
one batched computation — :func:`torch.func.vmap` of the functional student over the stacked
start parameters, the E augmented batches and their labels — and the loss is the mean of the E
matching losses, so its gradient is the mean of the E gradients. Each trajectory's BatchNorm
uses the statistics of its own batch, as a single student does (vmap normalises each vmapped
slice on its own). E = 1 calls the single-trajectory function itself (bit for bit).

Speed levers (``torch.compile``, CUDA graphs, precision, channels-last): every matching function
takes an optional :class:`selmatch.distillation.levers.StudentStep` that computes each step's
gradient under them; without one (the default) the code below is the code that ran before the levers
existed.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from selmatch.distillation.levers import StudentStep, student_loss
from selmatch.training.augment import DSAConfig, DSADraw, apply_dsa, sample_dsa
from selmatch.training.params import ParamLayout


@dataclass
class StudentPlan:
    """The mini-batches (indices into the synthetic set) and augmentation draws of N steps."""

    batches: list[torch.Tensor]
    draws: list[DSADraw | None]


def plan_student_steps(
    set_size: int,
    n_steps: int,
    batch_size: int,
    image_size: tuple[int, int],
    dsa: DSAConfig | None,
    generator: torch.Generator,
    device: torch.device | None = None,
) -> StudentPlan:
    """Batches walk through random permutations of the whole set without replacement (a new
    permutation when one is used up), as the MTT/SelMatch code does; one DSA draw per step."""
    batches: list[torch.Tensor] = []
    chunks: list[torch.Tensor] = []
    for _ in range(n_steps):
        if not chunks:
            chunks = list(torch.randperm(set_size, generator=generator).split(batch_size))
        batches.append(chunks.pop(0))
    draws = [
        None if dsa is None else sample_dsa(dsa, len(b), image_size, generator) for b in batches
    ]
    return StudentPlan([b.to(device) for b in batches], draws)


def student_template(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose BatchNorm layers always use batch statistics and keep no
    running statistics (students train in train mode, as in MTT; nothing to copy or update)."""
    import copy

    template = copy.deepcopy(model).train()
    for module in template.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.track_running_stats = False
            module.running_mean = None
            module.running_var = None
            module.num_batches_tracked = None
    for parameter in template.parameters():
        parameter.requires_grad_(False)
    return template


@dataclass
class SyntheticTensors:
    """The synthetic set as the matching sees it: frozen images (no gradient), learnable
    images (a leaf with ``requires_grad``), and labels in the order [frozen; learnable]."""

    frozen: torch.Tensor
    learnable: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)

    def batch(self, indices: torch.Tensor) -> torch.Tensor:
        """Images of ``indices`` (positions in [frozen; learnable]) in that order; only the
        learnable rows carry a graph, and the whole set is never copied."""
        n_frozen = len(self.frozen)
        is_learnable = indices >= n_frozen
        if bool(is_learnable.all()):
            return self.learnable[indices - n_frozen]
        if not bool(is_learnable.any()):
            return self.frozen[indices]
        parts = torch.cat(
            [self.frozen[indices[~is_learnable]], self.learnable[indices[is_learnable] - n_frozen]]
        )
        source = torch.cat([torch.nonzero(~is_learnable), torch.nonzero(is_learnable)]).flatten()
        inverse = torch.empty_like(source)
        inverse[source] = torch.arange(len(source), device=source.device)
        return parts[inverse]


@dataclass
class MatchResult:
    loss: float
    grad_learnable: torch.Tensor
    grad_lr: torch.Tensor


StepLoss = Callable[[torch.Tensor, int], torch.Tensor]
#: ``grad(params, n, create_graph)``: the gradient of step n's loss at ``params``
StepGrad = Callable[[torch.Tensor, int, bool], torch.Tensor]
#: ``inputs(n)``: step n's augmented batch and its labels
StepInputs = Callable[[int], tuple[torch.Tensor, torch.Tensor]]


def _step_inputs_fn(synthetic: SyntheticTensors, plan: StudentPlan) -> StepInputs:
    def inputs(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = synthetic.batch(plan.batches[n])
        draw = plan.draws[n]
        if draw is not None:
            x = apply_dsa(x, draw)
        return x, synthetic.labels[plan.batches[n]]

    return inputs


def _step_loss_fn(
    template: nn.Module, layout: ParamLayout, synthetic: SyntheticTensors, plan: StudentPlan
) -> StepLoss:
    """``loss(params, n)``: the student's cross-entropy on step n's augmented batch."""
    inputs, network = _step_inputs_fn(synthetic, plan), student_loss(template, layout)
    return lambda params, n: network(params, *inputs(n))


def _step_grad_fn(
    step_loss: StepLoss, inputs: StepInputs, step: StudentStep | None, *, slots: bool = False
) -> StepGrad:
    """``grad(params, n, create_graph)``: by autograd on ``step_loss`` without levers, else
    by ``step`` on ``inputs(n)`` (``slots``: the unrolled loop, one CUDA graph per step)."""
    if step is None:

        def grad(params: torch.Tensor, n: int, create_graph: bool) -> torch.Tensor:
            (g,) = torch.autograd.grad(step_loss(params, n), params, create_graph=create_graph)
            return g

        return grad

    def levered(params: torch.Tensor, n: int, create_graph: bool) -> torch.Tensor:
        x, y = inputs(n)
        return step.gradient(params, x, y, create_graph=create_graph, slot=n if slots else None)

    return levered


def _scope(step: StudentStep | None) -> AbstractContextManager[Any]:
    return nullcontext() if step is None else step.scope()


def matching_loss(final: torch.Tensor, start: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """L = ‖θ̂_{t+N} − θ*_{t+M}‖² / ‖θ*_t − θ*_{t+M}‖² of one trajectory (vectors (P,)), or the
    mean of the E trajectories' L (matrices (E, P), row by row). The only copy of the loss:
    the unrolled modes back-propagate through it, the checkpointed ones take λ_N from it."""
    return ((final - target).square().sum(-1) / (start - target).square().sum(-1)).mean()


def _final_adjoint(
    final: torch.Tensor, start: torch.Tensor, target: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The checkpointed modes' loss at the student's final parameters and λ_N = ∂L/∂θ̂_N, by
    autograd of :func:`matching_loss` at a leaf copy of them (a few P-sized temporaries)."""
    with torch.enable_grad():
        leaf = final.detach().requires_grad_(True)
        loss = matching_loss(leaf, start, target)
        (adjoint,) = torch.autograd.grad(loss, leaf)
    return loss.detach(), adjoint


def _unrolled(
    step_grad: StepGrad,
    start: torch.Tensor,
    target: torch.Tensor,
    synthetic: SyntheticTensors,
    syn_lr: torch.Tensor,
    steps: int,
) -> MatchResult:
    """The unrolled modes: ``steps`` student steps with their graph, one backward pass."""
    params = start.detach().clone().requires_grad_(True)
    for n in range(steps):
        params = params - syn_lr * step_grad(params, n, True)
    return _backward(matching_loss(params, start, target), synthetic, syn_lr)


def _checkpointed(
    step_grad: StepGrad,
    forward_grad: StepGrad,
    start: torch.Tensor,
    target: torch.Tensor,
    synthetic: SyntheticTensors,
    lr: torch.Tensor,
    steps: int,
) -> MatchResult:
    """The checkpointed modes: a forward pass without a graph (``forward_grad``), then the
    reverse sweep from λ_N (``step_grad``, which tracks the learnable images)."""
    trajectory = _forward_trajectory(forward_grad, start, lr, steps)
    loss, adjoint = _final_adjoint(trajectory[-1], start, target)
    grad_images, grad_lr = _reverse_sweep(step_grad, trajectory, adjoint, synthetic, lr)
    return MatchResult(float(loss), grad_images, grad_lr)


def unrolled_match(
    template: nn.Module,
    layout: ParamLayout,
    start: torch.Tensor,
    target: torch.Tensor,
    synthetic: SyntheticTensors,
    syn_lr: torch.Tensor,
    plan: StudentPlan,
    step: StudentStep | None = None,
) -> MatchResult:
    """Default mode: unroll N student steps with their graph, back-propagate once."""
    step_grad = _step_grad_fn(
        _step_loss_fn(template, layout, synthetic, plan),
        _step_inputs_fn(synthetic, plan),
        step,
        slots=True,
    )
    with _scope(step):
        return _unrolled(step_grad, start, target, synthetic, syn_lr, len(plan.batches))


def checkpointed_match(
    template: nn.Module,
    layout: ParamLayout,
    start: torch.Tensor,
    target: torch.Tensor,
    synthetic: SyntheticTensors,
    syn_lr: torch.Tensor,
    plan: StudentPlan,
    step: StudentStep | None = None,
) -> MatchResult:
    """Memory-saving mode: the same gradient by reverse recomputation; peak memory is one
    step's graph plus N+1 parameter vectors, whatever N is."""
    step_grad = _step_grad_fn(
        _step_loss_fn(template, layout, synthetic, plan), _step_inputs_fn(synthetic, plan), step
    )
    lr = syn_lr.detach()
    frozen_view = SyntheticTensors(synthetic.frozen, synthetic.learnable.detach(), synthetic.labels)
    forward_grad = _step_grad_fn(
        _step_loss_fn(template, layout, frozen_view, plan), _step_inputs_fn(frozen_view, plan), step
    )
    with _scope(step):
        steps = len(plan.batches)
        return _checkpointed(step_grad, forward_grad, start, target, synthetic, lr, steps)


def _backward(loss: torch.Tensor, synthetic: SyntheticTensors, syn_lr: torch.Tensor) -> MatchResult:
    """The unrolled modes' result: ``loss`` and its gradients wrt the learnable images and
    the lr (zeros for what does not require one)."""
    inputs = [t for t in (synthetic.learnable, syn_lr) if t.requires_grad]
    grads = torch.autograd.grad(loss, inputs, allow_unused=True) if inputs else ()
    by_input = dict(zip((id(t) for t in inputs), grads, strict=True))
    return MatchResult(
        float(loss.detach()),
        _or_zeros(by_input.get(id(synthetic.learnable)), synthetic.learnable),
        _or_zeros(by_input.get(id(syn_lr)), syn_lr),
    )


def _forward_trajectory(
    forward_grad: StepGrad, start: torch.Tensor, lr: torch.Tensor, steps: int
) -> list[torch.Tensor]:
    """The checkpointed modes' forward pass without a graph: the ``steps`` + 1 parameter
    vectors (or (E, P) matrices) of the student."""
    trajectory = [start.detach()]
    with torch.no_grad():
        for n in range(steps):
            params = trajectory[-1].clone().requires_grad_(True)
            with torch.enable_grad():
                grad = forward_grad(params, n, False)
            trajectory.append(trajectory[-1] - lr * grad)
    return trajectory


def _reverse_sweep(
    step_grad: StepGrad,
    trajectory: list[torch.Tensor],
    adjoint: torch.Tensor,
    synthetic: SyntheticTensors,
    lr: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The checkpointed modes' reverse recomputation from the final adjoint: the gradients
    wrt the learnable images and the lr, one step's graph at a time."""
    grad_images = torch.zeros_like(synthetic.learnable)
    grad_lr = torch.zeros_like(lr)
    wants_images = synthetic.learnable.requires_grad and len(synthetic.learnable) > 0
    for n in reversed(range(len(trajectory) - 1)):
        params = trajectory[n].clone().requires_grad_(True)
        grad = step_grad(params, n, True)
        inner = (grad * adjoint).sum()
        wrt = (params, synthetic.learnable) if wants_images else (params,)
        pieces = torch.autograd.grad(inner, wrt, allow_unused=True)
        grad_lr -= inner.detach()
        if wants_images and pieces[1] is not None:
            grad_images -= lr * pieces[1]
        adjoint = adjoint - lr * pieces[0]
    return grad_images, grad_lr


def _or_zeros(grad: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(like) if grad is None else grad


MODES = {"unrolled": unrolled_match, "checkpointed": checkpointed_match}


# --------------------------------------------------------------------------- E trajectories
def _check_plans(starts: torch.Tensor, targets: torch.Tensor, plans: list[StudentPlan]) -> None:
    if not plans or starts.shape != targets.shape or starts.shape[0] != len(plans):
        raise ValueError(
            f"expected E start and target vectors for E = {len(plans)} plans, got "
            f"{tuple(starts.shape)} and {tuple(targets.shape)}"
        )
    sizes = [[len(b) for b in plan.batches] for plan in plans]
    if any(s != sizes[0] for s in sizes):
        raise ValueError("the E plans must have the same number of steps and batch sizes")


def _batched_step_inputs_fn(synthetic: SyntheticTensors, plans: list[StudentPlan]) -> StepInputs:
    """Step n's E batches stacked at dim 1, (b, E, ...), and their labels (b, E). Each batch is
    gathered and augmented with its own DSA draw as a single student's would be (draws may
    pick different operations, so this part is a loop)."""
    singles = [_step_inputs_fn(synthetic, plan) for plan in plans]

    def inputs(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        pairs = [single(n) for single in singles]
        return torch.stack([x for x, _ in pairs], 1), torch.stack([y for _, y in pairs], 1)

    return inputs


def _batched_step_loss_fn(
    template: nn.Module, layout: ParamLayout, synthetic: SyntheticTensors, plans: list[StudentPlan]
) -> StepLoss:
    """``loss(params, n)`` for ``params`` of shape (E, P): the *sum* of the E students'
    cross-entropies on their own step-n batches (trajectory e's loss depends on row e alone,
    so the gradient's row e is student e's gradient); the network runs once, vmapped over
    the E students (:func:`selmatch.distillation.levers.student_loss`)."""
    inputs = _batched_step_inputs_fn(synthetic, plans)
    network = student_loss(template, layout, batched=True)
    return lambda params, n: network(params, *inputs(n))


def batched_unrolled_match(
    template: nn.Module,
    layout: ParamLayout,
    starts: torch.Tensor,
    targets: torch.Tensor,
    synthetic: SyntheticTensors,
    syn_lr: torch.Tensor,
    plans: list[StudentPlan],
    step: StudentStep | None = None,
) -> MatchResult:
    """:func:`unrolled_match` of E trajectories at once (``starts``, ``targets``: (E, P)); the
    loss and gradients are the mean over the E trajectories."""
    _check_plans(starts, targets, plans)
    step_grad = _step_grad_fn(
        _batched_step_loss_fn(template, layout, synthetic, plans),
        _batched_step_inputs_fn(synthetic, plans),
        step,
        slots=True,
    )
    with _scope(step):
        return _unrolled(step_grad, starts, targets, synthetic, syn_lr, len(plans[0].batches))


def batched_checkpointed_match(
    template: nn.Module,
    layout: ParamLayout,
    starts: torch.Tensor,
    targets: torch.Tensor,
    synthetic: SyntheticTensors,
    syn_lr: torch.Tensor,
    plans: list[StudentPlan],
    step: StudentStep | None = None,
) -> MatchResult:
    """:func:`checkpointed_match` of E trajectories at once: N + 1 parameter matrices (E, P),
    one adjoint per trajectory (row e of λ_N: ∂ of the mean loss wrt student e's θ̂_N)."""
    _check_plans(starts, targets, plans)
    step_grad = _step_grad_fn(
        _batched_step_loss_fn(template, layout, synthetic, plans),
        _batched_step_inputs_fn(synthetic, plans),
        step,
    )
    lr = syn_lr.detach()
    frozen_view = SyntheticTensors(synthetic.frozen, synthetic.learnable.detach(), synthetic.labels)
    forward_grad = _step_grad_fn(
        _batched_step_loss_fn(template, layout, frozen_view, plans),
        _batched_step_inputs_fn(frozen_view, plans),
        step,
    )
    with _scope(step):
        steps = len(plans[0].batches)
        return _checkpointed(step_grad, forward_grad, starts, targets, synthetic, lr, steps)


BATCHED_MODES = {"unrolled": batched_unrolled_match, "checkpointed": batched_checkpointed_match}


def match_trajectories(
    mode: str,
    template: nn.Module,
    layout: ParamLayout,
    starts: torch.Tensor,
    targets: torch.Tensor,
    synthetic: SyntheticTensors,
    syn_lr: torch.Tensor,
    plans: list[StudentPlan],
    step: StudentStep | None = None,
) -> MatchResult:
    """The mean matching loss of E = ``len(plans)`` trajectories and its gradients, in one
    batched computation (``starts``, ``targets``: (E, P)). E = 1 is ``MODES[mode]`` itself,
    so a one-trajectory iteration is bit for bit what it was before this option existed.
    ``step``: the speed levers' student step (:mod:`selmatch.distillation.levers`); ``None``:
    none."""
    if len(plans) == 1:
        _check_plans(starts, targets, plans)
        return MODES[mode](
            template, layout, starts[0], targets[0], synthetic, syn_lr, plans[0], step
        )
    return BATCHED_MODES[mode](template, layout, starts, targets, synthetic, syn_lr, plans, step)


def sequential_match(
    mode: str,
    template: nn.Module,
    layout: ParamLayout,
    starts: torch.Tensor,
    targets: torch.Tensor,
    synthetic: SyntheticTensors,
    syn_lr: torch.Tensor,
    plans: list[StudentPlan],
    step: StudentStep | None = None,
) -> MatchResult:
    """The same mean as :func:`match_trajectories` by E single-trajectory calls, one after
    another (the reference of the tests and the benchmark)."""
    _check_plans(starts, targets, plans)
    results = [
        MODES[mode](template, layout, start, target, synthetic, syn_lr, plan, step)
        for start, target, plan in zip(starts, targets, plans, strict=True)
    ]
    count = len(results)
    return MatchResult(
        sum(r.loss for r in results) / count,
        torch.stack([r.grad_learnable for r in results]).sum(0) / count,
        torch.stack([r.grad_lr for r in results]).sum(0) / count,
    )
