"""What a Ray worker of the search (a trial, a precompute task, a final evaluation) trains on,
checked against what Ray gave it: a worker given a GPU that torch cannot see fails at once,
with one line saying so, instead of training for hours on the CPU."""

from __future__ import annotations

import os

import ray
import torch

from selmatch.core.config import SelmatchError
from selmatch.training.train import resolve_device


class GpuNotVisible(SelmatchError):
    """Ray gave this worker a GPU, but torch sees no CUDA device."""


def check_gpu_visible(gpus: float, device: str) -> None:
    """Raise :class:`GpuNotVisible` when this worker was given ``gpus`` > 0 and its ``device``
    (``auto`` or ``cuda``) needs CUDA that torch cannot see. ``device="cpu"`` trains on the
    CPU whatever Ray gave (tests use Ray's logical GPUs that way)."""
    if gpus <= 0 or device == "cpu" or torch.cuda.is_available():
        return
    raise GpuNotVisible(
        f"this worker on {ray.util.get_node_ip_address()} was given {gpus:g} GPU (Ray's GPU "
        f"ids {ray.get_gpu_ids()}, CUDA_VISIBLE_DEVICES="
        f"{os.environ.get('CUDA_VISIBLE_DEVICES', '(unset)')}) but torch {torch.__version__} "
        f"sees no CUDA device (built for CUDA {torch.version.cuda}): check the node's NVIDIA "
        "driver and torch build, or search with --gpus-per-trial 0"
    )


def prepare_worker(cpus: float, gpus: float, device: str) -> torch.device:
    """A Ray worker of the search, before it trains: one intra-op thread per CPU it was given
    (workers side by side must not oversubscribe the cores: OpenMP spinning turns that into a
    10x slowdown), the GPU it was given checked (:func:`check_gpu_visible`); its device."""
    torch.set_num_threads(max(1, int(cpus)))
    check_gpu_visible(gpus, device)
    return resolve_device(device)
