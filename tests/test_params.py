import torch

from selmatch.models import ModelConfig, build_model
from selmatch.params import ParamLayout, functional_forward


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


def test_functional_forward_matches_the_module_and_differentiates_the_vector() -> None:
    model = build_model(ModelConfig(width=8), (1, 28, 28), 10, seed=0).eval()
    layout = ParamLayout.of(model)
    flat = layout.flatten(model).requires_grad_(True)
    x = torch.randn(4, 1, 28, 28)
    out = functional_forward(model, layout, flat, x)
    assert torch.allclose(out, model(x), atol=1e-6)
    out.sum().backward()
    assert flat.grad is not None and flat.grad.abs().sum() > 0


def test_train_mode_functional_forward_leaves_the_template_untouched() -> None:
    model = build_model(ModelConfig(width=8), (1, 28, 28), 10, seed=0).train()
    layout = ParamLayout.of(model)
    before = {k: v.clone() for k, v in model.named_buffers()}
    functional_forward(model, layout, layout.flatten(model), torch.randn(4, 1, 28, 28) + 3)
    for name, value in model.named_buffers():
        assert torch.equal(value, before[name]), name
