import pytest
import torch

from selmatch.core.config import ConfigError
from selmatch.training.models import ModelConfig, build_model, count_parameters

# Parameter counts of the standard networks (ConvNet-D3 width 128 on CIFAR is the 320,010 of
# the MTT papers; ResNet-18 with the CIFAR stem has 11,173,962 for 10 classes).
EXPECTED = {
    ("convnet", (1, 28, 28), 10): 317_706,  # 28x28 padded to 32 by the first conv: 4x4 maps
    ("convnet", (3, 32, 32), 10): 320_010,
    ("convnet", (3, 64, 64), 200): 1_938_120,
    ("resnet18", (3, 32, 32), 10): 11_173_962,
    ("resnet18", (3, 32, 32), 100): 11_220_132,
    ("vgg11", (3, 32, 32), 10): 9_231_114,
}


@pytest.mark.parametrize(("name", "shape", "classes"), list(EXPECTED))
def test_shapes_and_parameter_counts(name, shape, classes) -> None:
    model = build_model(ModelConfig(name=name), shape, classes)
    assert count_parameters(model) == EXPECTED[(name, shape, classes)]
    model.eval()
    with torch.no_grad():
        logits = model(torch.randn(2, *shape))
    assert logits.shape == (2, classes)


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 64, 64)])
@pytest.mark.parametrize("name", ["resnet18", "vgg11"])
def test_every_model_accepts_every_dataset_shape(name, shape) -> None:
    model = build_model(ModelConfig(name=name, norm="instance"), shape, 10).eval()
    with torch.no_grad():
        assert model(torch.randn(1, *shape)).shape == (1, 10)


@pytest.mark.parametrize(
    ("norm", "layer"),
    [("batch", torch.nn.BatchNorm2d), ("instance", torch.nn.GroupNorm), ("none", None)],
)
def test_convnet_norm_option(norm, layer) -> None:
    model = build_model(ModelConfig(width=8, norm=norm), (1, 28, 28), 10)
    kinds = {type(m) for m in model.modules()}
    if layer is None:
        assert not kinds & {torch.nn.BatchNorm2d, torch.nn.GroupNorm}
    else:
        assert layer in kinds


def test_convnet_width_and_depth() -> None:
    model = build_model(ModelConfig(width=16, depth=2), (1, 28, 28), 10)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [16, 16]
    assert model.classifier.in_features == 16 * 8 * 8  # 28 + 2·(3 − 1) = 32 → 16 → 8


def test_convnet_feature_maps_on_28_pixels_are_those_of_the_mtt_convnet() -> None:
    # DC/DSA/MTT pad a 28x28 input by 3 in the first conv: maps 32/16/8/4, none dropped
    model = build_model(ModelConfig(width=4), (1, 28, 28), 10)
    sizes, x = [], torch.randn(1, 1, 28, 28)
    for layer in model.features:
        x = layer(x)
        if isinstance(layer, torch.nn.Conv2d):
            sizes.append(x.shape[-1])
    assert sizes == [32, 16, 8]
    assert model.embed(torch.randn(1, 1, 28, 28)).shape == (1, 4 * 4 * 4)
    padded = build_model(ModelConfig(width=4), (3, 32, 32), 10)
    assert padded.features[0].padding == (1, 1)  # other sizes are unchanged


def test_seed_fixes_initialisation_without_touching_global_rng() -> None:
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = build_model(ModelConfig(width=8), (1, 28, 28), 10, seed=5)
    after = torch.rand(1)
    b = build_model(ModelConfig(width=8), (1, 28, 28), 10, seed=5)
    c = build_model(ModelConfig(width=8), (1, 28, 28), 10, seed=6)
    assert torch.equal(before, after)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)
    assert not torch.equal(next(a.parameters()), next(c.parameters()))


def test_too_deep_convnet_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match=r"--depth must be in \[1, 4\] for 28x28 images"):
        build_model(ModelConfig(depth=5), (1, 28, 28), 10)
