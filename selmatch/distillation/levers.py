"""Speed levers of the student step: each behind an option, all off by default.

Nearly all of a matching iteration is the student's N steps: the gradient
g_n = ∇_θ CE(f(x_n; θ̂_n), y_n) of each step, kept in the graph (unrolled mode) or rebuilt one
step at a time (memory-saving mode), then back-propagated through (a double backward).
:class:`StudentStep` computes g_n under the four :class:`Levers`; with all of them off the
matching functions do not use it and run exactly the code they ran before the levers existed.

- ``compile``: ``torch.compile`` of the step's *gradient function*, ``torch.func.grad`` of the
  student's loss, traced as one forward graph; the matching's backward through it is then a
  first-order backward of that graph. Compiling the loss alone cannot work: differentiating
  its compiled backward again is refused ("torch.compile with aot_autograd does not currently
  support double backward", pytorch/pytorch#91469 and #183603; seen here with torch 2.14).
- ``cuda_graphs``: each step's gradient and its backward replayed from CUDA graphs
  (``torch.cuda.make_graphed_callables``) captured at the first iteration: one per student
  step in unrolled mode (all N steps' tensors live until the backward), one per batch shape
  in memory-saving mode. Gathering the batch, DSA (its operation changes from step to step)
  and the parameter update stay outside the graphs. CUDA only: elsewhere it is an error.
- ``precision``: ``default`` leaves PyTorch's settings alone (on CUDA these are TF32 in cuDNN
  convolutions and IEEE float32 in matrix products); ``fp32`` forces IEEE float32 in both and
  ``tf32`` allows TF32 in both, for the whole matching computation (CUDA settings: on CPU
  neither changes a bit); ``bf16`` runs the student's forward pass under
  ``torch.autocast(dtype=torch.bfloat16)`` (its backward follows the forward's dtypes); the
  matching loss and the parameter updates stay float32.
- ``channels_last``: the student's batch and conv weights in channels-last (NHWC) memory
  format, the layout GPU tensor cores prefer. One trajectory per step only: ``vmap`` of E
  students cannot query that layout ("NYI: querying is_contiguous inside of vmap").
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, vmap

from selmatch.core.config import Config, ConfigError, check_bool, check_choice
from selmatch.training.params import ParamLayout

#: ``precision`` values (module docstring)
PRECISIONS = ("default", "fp32", "tf32", "bf16")

#: ``loss(params, x, y)``: the student's cross-entropy on batch ``x``; params (P,), or (E, P)
#: for E students with x (b, E, ...) and y (b, E), the sum of the E losses
StudentLoss = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Levers(Config):
    """Which levers are on (module docstring). All off = the plain matching code."""

    compile: bool = False
    cuda_graphs: bool = False
    precision: str = "default"
    channels_last: bool = False

    def __post_init__(self) -> None:
        check_bool("compile", self.compile)
        check_bool("cuda_graphs", self.cuda_graphs)
        check_choice("precision", self.precision, PRECISIONS)
        check_bool("channels_last", self.channels_last)

    @property
    def active(self) -> bool:
        return self != Levers()

    def check_device(self, device: torch.device) -> None:
        if self.cuda_graphs and device.type != "cuda":
            raise ConfigError(f"--cuda-graphs needs a CUDA device; this run is on {device.type}")

    def describe(self) -> str:
        on = [name for name in ("compile", "cuda_graphs", "channels_last") if getattr(self, name)]
        return ", ".join([*on, f"precision {self.precision}"])


def student_loss(
    template: nn.Module, layout: ParamLayout, *, batched: bool = False, channels_last: bool = False
) -> StudentLoss:
    """The student's loss as a function of its flat parameters (one student, or E at once:
    ``vmap`` over the E parameter rows, the batch axis at dim 1 so the grouped convolutions
    and BatchNorm see it without a copy; each student's BatchNorm uses its own batch)."""

    def one(params: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        weights = layout.unflatten(params)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
            weights = {k: _nhwc(w) for k, w in weights.items()}
        return F.cross_entropy(functional_call(template, weights, (x,)), y)

    if not batched:
        return one
    students = vmap(one, in_dims=(0, 1, 1))
    return lambda params, x, y: students(params, x, y).sum()


def _nhwc(weight: torch.Tensor) -> torch.Tensor:
    return weight.contiguous(memory_format=torch.channels_last) if weight.dim() == 4 else weight


@contextmanager
def precision_scope(precision: str) -> Iterator[None]:
    """``fp32`` / ``tf32``: CUDA's float32 precision of convolutions and matrix products for
    the scope, then the previous settings back; other values change nothing."""
    if precision not in ("fp32", "tf32"):
        yield
        return
    conv = getattr(torch.backends.cudnn, "conv", None)
    backends: list[Any] = [torch.backends.cuda.matmul, conv]
    value: str | bool = "ieee" if precision == "fp32" else "tf32"
    names = ["fp32_precision"] * 2
    if not all(hasattr(b, "fp32_precision") for b in backends):
        # torch < 2.9: the older flags (and no cudnn.conv group)
        backends = [torch.backends.cuda.matmul, torch.backends.cudnn]
        names, value = ["allow_tf32"] * 2, precision == "tf32"
    saved = [getattr(b, n) for b, n in zip(backends, names, strict=True)]
    for backend, name in zip(backends, names, strict=True):
        setattr(backend, name, value)
    try:
        yield
    finally:
        for backend, name, old in zip(backends, names, saved, strict=True):
            setattr(backend, name, old)


GradientFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


class StudentStep:
    """g(θ; x, y) = ∇_θ loss(θ; x, y) of one student step under ``levers``, for one student
    (θ: (P,)) or E at once (θ: (E, P)). It holds the compiled function and the captured CUDA
    graphs, so build one per distillation run and pass it to every iteration's matching."""

    def __init__(self, template: nn.Module, layout: ParamLayout, levers: Levers) -> None:
        self.levers = levers
        self._template, self._layout = template, layout
        self._losses: dict[bool, StudentLoss] = {}
        self._functions: dict[bool, GradientFn] = {}
        self._graphs: dict[tuple[Any, ...], GradientFn] = {}

    def scope(self) -> Any:
        """The precision settings of the whole matching computation (forward and backward)."""
        return precision_scope(self.levers.precision)

    def gradient(
        self,
        params: torch.Tensor,
        x: torch.Tensor,
        y: torch.Tensor,
        *,
        create_graph: bool,
        slot: int | None = None,
    ) -> torch.Tensor:
        """g at ``params`` (which requires grad); with ``create_graph`` it stays differentiable
        in ``params`` and ``x``. ``slot``: the step's position in an unrolled trajectory (CUDA
        graphs keep one graph per position there, since all of them are live until the
        backward), ``None`` where each step's backward runs before the next step."""
        batched = params.dim() == 2
        if self.levers.cuda_graphs:
            graphed = self._graph(batched, slot, params, x, y)
            if create_graph:
                return graphed(params, x, y)
            with torch.no_grad():
                return graphed(params, x, y)
        if self.levers.compile:
            compiled = self._function(batched)
            if create_graph:
                return compiled(params, x, y)
            return compiled(params.detach(), x.detach(), y)
        loss = self._loss(batched)(params, x, y)
        (grad,) = torch.autograd.grad(loss, params, create_graph=create_graph)
        return grad

    def _loss(self, batched: bool) -> StudentLoss:
        if batched not in self._losses:
            self._losses[batched] = self._levered_loss(batched)
        return self._losses[batched]

    def _levered_loss(self, batched: bool) -> StudentLoss:
        if batched and self.levers.channels_last:
            raise ConfigError("--channels-last applies to --trajectories-per-step 1 only")
        loss = student_loss(
            self._template, self._layout, batched=batched, channels_last=self.levers.channels_last
        )
        if self.levers.precision != "bf16":
            return loss

        def autocast_loss(params: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            # no cast cache: the weights are new tensors every step (and CUDA graphs need it off)
            with torch.autocast(x.device.type, dtype=torch.bfloat16, cache_enabled=False):
                return loss(params, x, y)

        return autocast_loss

    def _function(self, batched: bool) -> GradientFn:
        """The gradient as one differentiable function of (params, x, y): compiled
        ``torch.func.grad`` of the loss, or the eager gradient with its graph."""
        if batched not in self._functions:
            loss = self._loss(batched)
            if self.levers.compile:
                self._functions[batched] = torch.compile(torch.func.grad(loss), dynamic=False)
            else:

                def eager(params: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
                    (grad,) = torch.autograd.grad(loss(params, x, y), params, create_graph=True)
                    return grad

                self._functions[batched] = eager
        return self._functions[batched]

    def _graph(
        self,
        batched: bool,
        slot: int | None,
        params: torch.Tensor,
        x: torch.Tensor,
        y: torch.Tensor,
    ) -> GradientFn:
        """The CUDA-graphed gradient for this slot and these shapes, captured on first use
        from copies of the first inputs (a graph's outputs and saved tensors are its own
        memory, overwritten by its next replay)."""
        key = (batched, slot, params.shape, x.shape, y.shape, x.dtype)
        if key not in self._graphs:
            self.levers.check_device(params.device)
            sample = (
                params.detach().clone().requires_grad_(True),
                x.detach().clone().requires_grad_(True),
                y.detach().clone(),
            )
            graphed = torch.cuda.make_graphed_callables(self._function(batched), sample)
            self._graphs[key] = graphed  # type: ignore[assignment]
        return self._graphs[key]
