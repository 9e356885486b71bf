"""Flat parameter vectors: how trajectories are stored and how distillation runs networks.

An expert trajectory is a sequence of flat float32 vectors, one per epoch. :class:`ParamLayout`
records which slice of the vector is which parameter of the model, so a vector can be put
back into a model, or used directly in a functional forward pass (``torch.func``) where the
distillation differentiates through the parameters themselves.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn


@dataclass(frozen=True)
class ParamLayout:
    """Names and shapes of a model's parameters, in ``named_parameters()`` order."""

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]

    @classmethod
    def of(cls, model: nn.Module) -> ParamLayout:
        named = list(model.named_parameters())
        return cls(tuple(n for n, _ in named), tuple(tuple(p.shape) for _, p in named))

    @property
    def sizes(self) -> tuple[int, ...]:
        return tuple(math.prod(shape) for shape in self.shapes)

    @property
    def numel(self) -> int:
        return sum(self.sizes)

    def flatten(self, model: nn.Module) -> torch.Tensor:
        """The model's parameters as one detached float32 vector."""
        params = dict(model.named_parameters())
        return torch.cat([params[name].detach().reshape(-1).float() for name in self.names])

    def unflatten(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """Views of ``flat`` shaped as the parameters (gradients flow through them)."""
        if flat.shape != (self.numel,):
            raise ValueError(f"expected a vector of {self.numel} values, got {tuple(flat.shape)}")
        pieces = flat.split(self.sizes)
        return {
            name: piece.view(shape)
            for name, piece, shape in zip(self.names, pieces, self.shapes, strict=True)
        }

    def load_into(self, model: nn.Module, flat: torch.Tensor) -> nn.Module:
        """Copy ``flat`` into ``model``'s parameters (in place)."""
        with torch.no_grad():
            for name, value in self.unflatten(flat).items():
                model.get_parameter(name).copy_(value)
        return model

    def to_dict(self) -> dict[str, Any]:
        return {"names": list(self.names), "shapes": [list(s) for s in self.shapes]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ParamLayout:
        return cls(tuple(data["names"]), tuple(tuple(s) for s in data["shapes"]))
