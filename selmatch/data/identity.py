"""What a result was made from: the identity of a dataset's content, recorded by everything
computed from it (score tables, experts, checkpoints, sweeps, searches) and checked wherever
such a thing is used again, so that a table or a resume never silently meets other data.

The identity is the dataset's name, its train and test sizes and a digest of its pixels and
labels (BLAKE2b over the tensors' bytes, about 0.1 s for Fashion-MNIST, computed once per
loaded dataset). A record without a digest (written before it was kept) is checked on what it
holds: the name and, where a score vector says it, the size.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

import torch

from selmatch.core.config import ConfigError
from selmatch.data import ImageDataset

#: the key under which records keep :func:`data_identity`
DATA_KEY = "data"


def _bytes(tensor: torch.Tensor) -> bytes:
    return tensor.detach().cpu().contiguous().numpy().tobytes()


_CACHE = "_digest"  # where a loaded dataset keeps its digest (a cache, not a field)


def data_digest(dataset: ImageDataset) -> str:
    """A 16-hex-digit digest of the dataset's images and labels (train, then test)."""
    cached = dataset.__dict__.get(_CACHE)
    if cached is not None:
        return str(cached)
    digest = hashlib.blake2b(digest_size=8)
    for tensor in (
        dataset.train_images,
        dataset.train_labels,
        dataset.test_images,
        dataset.test_labels,
    ):
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(_bytes(tensor))
    return known_digest(dataset, digest.hexdigest())


def known_digest(dataset: ImageDataset, digest: str) -> str:
    """Keep ``digest`` as ``dataset``'s, computed where its arrays came from (a search's trial
    rebuilds the dataset the precompute digested: it need not hash it again)."""
    object.__setattr__(dataset, _CACHE, digest)  # frozen dataclass
    return digest


def data_identity(dataset: ImageDataset) -> dict[str, Any]:
    """What a record keeps of the data it was made from."""
    return {
        "dataset": dataset.name,
        "train_size": int(dataset.train_labels.shape[0]),
        "test_size": int(dataset.test_labels.shape[0]),
        "digest": data_digest(dataset),
    }


def describe(identity: Mapping[str, Any]) -> str:
    return (
        f"{identity.get('dataset')} ({identity.get('train_size')} train / "
        f"{identity.get('test_size')} test images, digest {identity.get('digest')})"
    )


def check_data(recorded: Any, dataset: ImageDataset, what: str) -> None:
    """Refuse ``dataset`` when ``recorded`` (a record's :func:`data_identity`, or None for a
    record that predates it) says the thing ``what`` names was made from other data."""
    if not isinstance(recorded, Mapping):
        return
    now = data_identity(dataset)
    differs = [
        k
        for k in ("dataset", "train_size", "test_size", "digest")
        if recorded.get(k) is not None and recorded.get(k) != now[k]
    ]
    if differs:
        raise ConfigError(
            f"{what} made from {describe(recorded)}, but the data here is {describe(now)}; "
            "use the --dataset and --data-root it was made with, or make it again"
        )


def fingerprint(value: Any) -> str:
    """A 16-hex-digit digest of a JSON-able value (settings, manifests' parts)."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


def tensor_digest(tensor: torch.Tensor) -> str:
    """A 16-hex-digit digest of a tensor's shape, dtype and values."""
    digest = hashlib.blake2b(digest_size=8)
    digest.update(f"{tuple(tensor.shape)} {tensor.dtype}".encode())
    digest.update(_bytes(tensor))
    return digest.hexdigest()
