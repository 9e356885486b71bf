import pytest
import torch

from selmatch.augment import DSAConfig
from selmatch.matching import (
    SyntheticTensors,
    checkpointed_match,
    plan_student_steps,
    student_template,
    unrolled_match,
)
from selmatch.models import ModelConfig, build_model
from selmatch.params import ParamLayout

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
        images[:n_frozen], images[n_frozen:].clone().requires_grad_(True),
        torch.arange(n_frozen + n_learnable) % 10,
    )  # fmt: skip
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
    numeric = (loss_at(base + eps * direction, lr.detach())
               - loss_at(base - eps * direction, lr.detach())) / (2 * eps)  # fmt: skip
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
