"""Networks of the dataset-distillation literature, sized from the dataset's image shape.

- ``convnet``: depth x [3x3 conv(width) -> norm -> ReLU -> 2x2 avg-pool] -> linear; the standard
  network of DC/DSA/MTT/SelMatch (default depth 3, width 128).
- ``resnet18``: ResNet-18 with the CIFAR stem (3x3 conv, stride 1, no max-pool); the
  evaluation network of the SelMatch paper (Table 1).
- ``vgg11``: VGG-11 with normalisation after every conv.

``norm`` is one of ``batch``, ``instance`` (GroupNorm with one group per channel, as MTT's
"instancenorm"), or ``none``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from selmatch.core.config import Config, ConfigError, check_choice, check_int, setting

NORMS = ("batch", "instance", "none")
#: the networks :data:`MODELS` builds, by name
MODEL_NAMES = ("convnet", "resnet18", "vgg11")
#: the ``--help`` section of the network's settings
NETWORK = "network"


@dataclass(frozen=True)
class ModelConfig(Config):
    """Which network to build. ``width``/``depth`` apply to ``convnet`` only."""

    name: str = setting(
        "convnet",
        flag="--model",
        choices=MODEL_NAMES,
        group=NETWORK,
        help="network: convnet (the distillation standard), resnet18 (CIFAR stem; the paper's "
        "evaluation network) or vgg11",
    )
    width: int = setting(128, group=NETWORK, help="ConvNet channels per layer, in [1, 4096]")
    depth: int = setting(
        3,
        group=NETWORK,
        help="ConvNet layers (conv, norm, ReLU, 2x2 average pool each), in [1, 8]; 28x28 "
        "images allow at most 4",
    )
    norm: str = setting(
        "batch",
        choices=NORMS,
        group=NETWORK,
        help="normalisation layer: batch, instance (GroupNorm per channel) or none",
    )

    def __post_init__(self) -> None:
        check_choice("name", self.name, MODEL_NAMES)
        check_int("width", self.width, 1, 4096)
        check_int("depth", self.depth, 1, 8)
        check_choice("norm", self.norm, NORMS)

    def describe(self) -> str:
        if self.name == "convnet":
            return f"ConvNet-D{self.depth} width {self.width} ({self.norm} norm)"
        return f"{self.name} ({self.norm} norm)"


def make_norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "instance":
        return nn.GroupNorm(channels, channels, affine=True)
    return nn.Identity()


class ConvNet(nn.Module):
    def __init__(
        self, in_channels: int, image_size: int, num_classes: int, width: int, depth: int, norm: str
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels, size = in_channels, image_size
        # As in the DC/DSA/MTT ConvNet: 28x28 inputs are padded by 3 in the first conv, so the
        # feature maps are 32/16/8/4 (with padding 1 they would be 28/14/7/3, and the 7 -> 3
        # pooling drops a row and a column).
        first_padding = 3 if image_size == 28 else 1
        size += 2 * (first_padding - 1)
        for layer in range(depth):
            padding = first_padding if layer == 0 else 1
            layers += [
                nn.Conv2d(channels, width, kernel_size=3, padding=padding),
                make_norm(norm, width),
                nn.ReLU(inplace=True),
                nn.AvgPool2d(kernel_size=2, stride=2),
            ]
            channels, size = width, size // 2
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(width * size * size, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The penultimate features (used by the coverage metric)."""
        return self.features(x).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int, norm: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = make_norm(norm, planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = make_norm(norm, planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), make_norm(norm, planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class ResNet18(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, norm: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
        self.bn1 = make_norm(norm, 64)
        stages: list[nn.Module] = []
        in_planes = 64
        for planes, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            stages.append(
                nn.Sequential(
                    BasicBlock(in_planes, planes, stride, norm), BasicBlock(planes, planes, 1, norm)
                )
            )
            in_planes = planes
        self.layers = nn.Sequential(*stages)
        self.classifier = nn.Linear(512, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layers(torch.relu(self.bn1(self.conv1(x))))
        return torch.flatten(nn.functional.adaptive_avg_pool2d(out, 1), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))


VGG11_LAYOUT = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")


class VGG11(nn.Module):
    def __init__(self, in_channels: int, image_size: int, num_classes: int, norm: str) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels, size = in_channels, image_size
        # 28x28 inputs are padded to 32 by the first conv, as the DC benchmark's VGG does,
        # so that five max-pools leave a 1x1 map.
        first_padding = 3 if image_size == 28 else 1
        size += 2 * (first_padding - 1)
        for item in VGG11_LAYOUT:
            if item == "M":
                layers.append(nn.MaxPool2d(2, 2))
                size //= 2
                continue
            padding = first_padding if not layers else 1
            layers += [
                nn.Conv2d(channels, int(item), 3, padding=padding),
                make_norm(norm, int(item)),
                nn.ReLU(inplace=True),
            ]
            channels = int(item)
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(512 * size * size, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))


ModelBuilder = Callable[[ModelConfig, tuple[int, int, int], int], nn.Module]


def _build_convnet(config: ModelConfig, shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    channels, height, _ = shape
    if height >> config.depth < 1:
        raise ConfigError(
            f"--depth must be in [1, {height.bit_length() - 1}] for {height}x{height} images "
            f"(each layer halves the size), got {config.depth}"
        )
    return ConvNet(channels, height, num_classes, config.width, config.depth, config.norm)


MODELS: dict[str, ModelBuilder] = {
    "convnet": _build_convnet,
    "resnet18": lambda config, shape, k: ResNet18(shape[0], k, config.norm),
    "vgg11": lambda config, shape, k: VGG11(shape[0], shape[1], k, config.norm),
}


def build_model(
    config: ModelConfig,
    image_shape: tuple[int, int, int],
    num_classes: int,
    *,
    seed: int | None = None,
) -> nn.Module:
    """Build the network ``config`` names for ``image_shape`` = (C, H, W) inputs.

    With ``seed``, the initial weights depend on the seed alone (the global RNG is left as
    it was); seeds come from configs, never from the clock."""
    _, height, width = image_shape
    if height != width:
        raise ConfigError(f"images must be square, got {height}x{width}; pass --image-size")
    if height < 8:
        raise ConfigError(f"images must be at least 8x8 pixels, got {height}x{width}")
    builder = MODELS[config.name]
    if seed is None:
        return builder(config, image_shape, num_classes)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return builder(config, image_shape, num_classes)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
