import pytest
import torch
from matching_cases import matching_case

from selmatch.distillation import matching
from selmatch.distillation.matching import (
    SyntheticTensors,
    _final_adjoint,
    batched_checkpointed_match,
    batched_unrolled_match,
    checkpointed_match,
    matching_loss,
    plan_student_steps,
    student_template,
    unrolled_match,
)
from selmatch.training.augment import DSAConfig
from selmatch.training.models import ModelConfig, build_model
from selmatch.training.params import ParamLayout

D = torch.float64


def small_case(n_frozen=12, n_learnable=8, steps=4, norm="batch", seed=0):
    torch.manual_seed(seed)
    model = build_model(ModelConfig(width=6, norm=norm), (1, 28, 28), 10, seed=seed).to(D)
    template = student_template(model)
    layout = ParamLayout.of(template)
    start = layout.flatten(model).to(D)
    target = start + 0.02 * torch.randn_like(start)
    images = torch.randn(n_frozen + n_learnable, 1, 28, 28, dtype=D)
    synthetic = SyntheticTensors(
        images[:n_frozen],
        images[n_frozen:].clone().requires_grad_(True),
        torch.arange(n_frozen + n_learnable) % 10,
    )
    lr = torch.tensor(0.02, dtype=D, requires_grad=True)
    plan = plan_student_steps(
        n_frozen + n_learnable, steps, 7, (28, 28), DSAConfig(), torch.Generator().manual_seed(seed)
    )
    return template, layout, start, target, synthetic, lr, plan


@pytest.mark.slow
def test_memory_saving_gradient_equals_the_default_one() -> None:
    for norm in ("batch", "instance", "none"):
        case = small_case(norm=norm)
        a, b = unrolled_match(*case), checkpointed_match(*case)
        assert abs(a.loss - b.loss) <= 1e-12 * abs(a.loss)
        assert torch.allclose(a.grad_learnable, b.grad_learnable, rtol=1e-9, atol=1e-14)
        assert torch.allclose(a.grad_lr, b.grad_lr, rtol=1e-9)
        assert a.grad_learnable.abs().sum() > 0


def test_gradients_match_finite_differences() -> None:
    template, layout, start, target, synthetic, lr, plan = small_case()
    result = unrolled_match(template, layout, start, target, synthetic, lr, plan)

    def loss_at(images: torch.Tensor, step: torch.Tensor) -> float:
        moved = SyntheticTensors(synthetic.frozen, images, synthetic.labels)
        return unrolled_match(template, layout, start, target, moved, step, plan).loss

    eps = 1e-6
    base = synthetic.learnable.detach()
    direction = torch.zeros_like(base)
    direction[2, 0, 13, 9] = 1.0
    numeric = (
        loss_at(base + eps * direction, lr.detach()) - loss_at(base - eps * direction, lr.detach())
    ) / (2 * eps)
    assert abs(numeric - float(result.grad_learnable[2, 0, 13, 9])) < 1e-6 * max(1.0, abs(numeric))
    numeric_lr = (loss_at(base, lr.detach() + eps) - loss_at(base, lr.detach() - eps)) / (2 * eps)
    assert abs(numeric_lr - float(result.grad_lr)) < 1e-5 * abs(numeric_lr)


def test_frozen_images_get_no_gradient_but_shape_the_loss() -> None:
    template, layout, start, target, synthetic, lr, plan = small_case()
    assert not synthetic.frozen.requires_grad
    result = unrolled_match(template, layout, start, target, synthetic, lr, plan)
    assert result.grad_learnable.shape == synthetic.learnable.shape
    changed = SyntheticTensors(synthetic.frozen + 1.0, synthetic.learnable, synthetic.labels)
    assert unrolled_match(template, layout, start, target, changed, lr, plan).loss != result.loss


def test_batches_walk_the_whole_set_without_replacement() -> None:
    plan = plan_student_steps(20, 6, 7, (28, 28), None, torch.Generator().manual_seed(0))
    first_pass = torch.cat(plan.batches[:3])
    assert sorted(first_pass.tolist()) == list(range(20))
    assert [len(b) for b in plan.batches] == [7, 7, 6, 7, 7, 6]
    assert plan.draws == [None] * 6


def test_mixed_batches_keep_the_requested_order() -> None:
    frozen = torch.arange(4.0).view(4, 1, 1, 1)
    learnable = (10 + torch.arange(3.0)).view(3, 1, 1, 1).requires_grad_(True)
    synthetic = SyntheticTensors(frozen, learnable, torch.zeros(7, dtype=torch.long))
    out = synthetic.batch(torch.tensor([5, 0, 6, 3, 4]))
    assert out.flatten().tolist() == [11.0, 0.0, 12.0, 3.0, 10.0]
    out.sum().backward()
    assert learnable.grad.flatten().tolist() == [1.0, 1.0, 1.0]


MATCHERS = {
    "unrolled": (unrolled_match, 1),
    "checkpointed": (checkpointed_match, 1),
    "batched unrolled": (batched_unrolled_match, 3),
    "batched checkpointed": (batched_checkpointed_match, 3),
}


@pytest.mark.parametrize("name", sorted(MATCHERS))
def test_every_mode_reports_the_one_shared_loss(name, monkeypatch) -> None:
    function, trajectories = MATCHERS[name]
    template, layout, starts, targets, synthetic, lr, plans = matching_case(
        trajectories=trajectories,
        dtype=D,
        n_frozen=9,
        n_learnable=11,
        steps=3,
        batch=7,
        shape=(1, 16, 16),
    )
    calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def recorded(final: torch.Tensor, start: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        loss = matching_loss(final, start, target)
        calls.append((final.detach().clone(), loss.detach()))
        return loss

    monkeypatch.setattr(matching, "matching_loss", recorded)
    if trajectories == 1:
        result = function(template, layout, starts[0], targets[0], synthetic, lr, plans[0])
    else:
        result = function(template, layout, starts, targets, synthetic, lr, plans)
    assert len(calls) == 1
    final, loss = calls[0]
    assert final.shape == (starts[0] if trajectories == 1 else starts).shape
    assert result.loss == float(loss)


def test_the_loss_of_e_trajectories_is_the_mean_of_their_losses() -> None:
    start = torch.randn(3, 50, dtype=D)
    target, final = start + torch.randn_like(start), start + torch.randn_like(start)
    singles = [
        (f - t).square().sum() / (s - t).square().sum()
        for f, s, t in zip(final, start, target, strict=True)
    ]
    assert torch.equal(matching_loss(final[0], start[0], target[0]), singles[0])
    batched = matching_loss(final, start, target)
    assert abs(float(batched) - float(sum(singles)) / 3) <= 1e-15 * float(batched)


def test_the_final_adjoint_is_the_loss_gradient() -> None:
    """λ_N of the checkpointed modes (autograd of the shared loss) is the closed form
    2 (θ̂_N − θ*_{t+M}) / (E ‖θ*_t − θ*_{t+M}‖²), row by row, and agrees with finite differences."""
    start = torch.randn(3, 40, dtype=D)
    target, final = start + torch.randn_like(start), start + torch.randn_like(start)
    for f, s, t, count in ((final[0], start[0], target[0], 1), (final, start, target, 3)):
        loss, adjoint = _final_adjoint(f, s, t)
        assert torch.equal(loss, matching_loss(f, s, t))
        distance = (s - t).square().sum(-1, keepdim=True)
        assert torch.allclose(adjoint, 2 * (f - t) / (count * distance), rtol=1e-14, atol=0)
        eps, direction = 1e-6, torch.zeros_like(f)
        direction.view(-1)[7] = 1.0
        numeric = (
            matching_loss(f + eps * direction, s, t) - matching_loss(f - eps * direction, s, t)
        ) / (2 * eps)
        assert abs(float(numeric) - float(adjoint.view(-1)[7])) < 1e-8
