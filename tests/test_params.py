import torch
import torch.nn.functional as F

from selmatch.distillation.levers import student_loss
from selmatch.distillation.matching import student_template
from selmatch.training.models import ModelConfig, build_model
from selmatch.training.params import ParamLayout


def test_flat_vector_round_trip_through_a_model() -> None:
    model = build_model(ModelConfig(width=8), (1, 28, 28), 10, seed=0)
    layout = ParamLayout.of(model)
    flat = layout.flatten(model)
    assert flat.shape == (sum(p.numel() for p in model.parameters()),)
    other = build_model(ModelConfig(width=8), (1, 28, 28), 10, seed=1)
    assert not torch.equal(layout.flatten(other), flat)
    layout.load_into(other, flat)
    assert torch.equal(layout.flatten(other), flat)
    for a, b in zip(model.parameters(), other.parameters(), strict=True):
        assert torch.equal(a, b)
    assert ParamLayout.from_dict(layout.to_dict()) == layout


def test_the_students_functional_loss_matches_the_module_and_differentiates_the_vector():
    """The student as the matching runs it (selmatch.distillation.levers.student_loss on the
    template): the module's loss from a flat vector, differentiable in that vector."""
    model = build_model(ModelConfig(width=8), (1, 28, 28), 10, seed=0).train()
    layout = ParamLayout.of(model)
    flat = layout.flatten(model).requires_grad_(True)
    x, y = torch.randn(4, 1, 28, 28), torch.tensor([0, 1, 2, 3])
    loss = student_loss(student_template(model), layout)(flat, x, y)
    assert torch.allclose(loss, F.cross_entropy(model(x), y), atol=1e-6)  # batch statistics
    loss.backward()
    assert flat.grad is not None and flat.grad.abs().sum() > 0


def test_the_student_template_leaves_the_model_untouched() -> None:
    model = build_model(ModelConfig(width=8), (1, 28, 28), 10, seed=0).train()
    layout = ParamLayout.of(model)
    before = {k: v.clone() for k, v in model.named_buffers()}
    template = student_template(model)
    student_loss(template, layout)(
        layout.flatten(model), torch.randn(4, 1, 28, 28) + 3, torch.zeros(4, dtype=torch.long)
    )
    for name, value in model.named_buffers():
        assert torch.equal(value, before[name]), name
    assert not list(template.buffers())  # no running statistics to copy or update
