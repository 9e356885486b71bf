"""Export a saved set to formats other tools read, and load any of them as a torch ``Dataset``.

A saved set (:mod:`selmatch.sets.synthetic`) stores its images as float32 tensors *normalised* with
the dataset's mean/std: ``x = (u / 255 - mean) / std``. Both exports undo that exactly,
``u = round(clamp((x * std + mean) * 255, 0, 255))``, so a real (``D_select``) image comes back as
the very bytes it was read from; a learned (``D_distill``) image is clamped to the displayable
range and quantised to 8 bits (at most 0.5/255 from the stored value, inside that range).

Formats (``selmatch export SET_DIR --out PATH --format ...``):

``imagefolder``
    ``PATH/<label>_<class name>/<index>.png`` (grayscale as mode ``L``, colour as ``RGB``;
    ``<label>`` zero-padded so that sorted folders are in label order, as torchvision's
    ``ImageFolder`` numbers them; ``<index>`` is the image's position in the set), a
    ``PATH/labels.csv`` with one row per image (``file,label,class,part``; ``part`` is
    ``distill`` or ``select``) in set order, and ``PATH/manifest.json``, the set's manifest
    unchanged. A ``/`` in a class name (Fashion-MNIST's ``T-shirt/top``) becomes ``_`` in its
    folder name; ``labels.csv`` keeps the real name.

``npz``
    one NumPy archive, readable with ``numpy.load(path, allow_pickle=False)``: ``images`` uint8
    ``(N, H, W, C)``, ``labels`` int64, ``distill_mask`` bool, ``class_names`` str,
    ``manifest`` (the manifest as a JSON string), ``images_normalized`` float32 ``(N, C, H, W)``
    (the set's tensor exactly as stored, for bit-exact reuse), ``mean`` and ``std`` float32,
    and when the set has them ``source_indices`` int64 and ``learned_lr`` float64.

Outputs are written under a temporary name beside ``PATH`` and renamed into place, so an
interrupted export never leaves a half-written tree that looks complete. An existing non-empty
``PATH`` is replaced only with ``overwrite=True`` (``--overwrite``), and only when it is a previous
export.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from selmatch.core.config import SelmatchError, check_choice
from selmatch.core.io import atomic_write
from selmatch.data.dataset import denormalize
from selmatch.data.readers import FASHION_MNIST_CLASSES
from selmatch.sets.synthetic import MANIFEST_FILE, TENSOR_FILE, SyntheticSet, SyntheticSetError

FORMATS = ("imagefolder", "npz")
LABELS_FILE = "labels.csv"
LABELS_HEADER = ("file", "label", "class", "part")
_KNOWN_CLASS_NAMES: dict[str, tuple[str, ...]] = {"fashion-mnist": FASHION_MNIST_CLASSES}
PARTS = {"distill": True, "select": False}
Transform = Callable[[torch.Tensor], Any]


class ExportError(SelmatchError):
    """An export cannot be written where asked, or a path is not something we can load."""


@dataclass(frozen=True)
class Exported:
    """What :func:`export_set` wrote."""

    path: Path
    format: str
    count: int
    num_distill: int


# --------------------------------------------------------------------------- shared helpers
def class_names(manifest: dict[str, Any]) -> list[str]:
    """The set's class names: the manifest's ``class_names``, else the built-in names of its
    dataset, else zero-padded label numbers (``00``, ``01``, ...)."""
    names = manifest.get("class_names")
    if names:
        return [str(n) for n in names]
    count = int(manifest["num_classes"])
    known = _KNOWN_CLASS_NAMES.get(str(manifest.get("dataset")))
    if known is not None and len(known) == count:
        return list(known)
    width = len(str(max(count - 1, 0)))
    return [f"{i:0{width}d}" for i in range(count)]


def folder_names(names: Sequence[str]) -> list[str]:
    """One folder per class, ``<label>_<name>`` with the label zero-padded, so that sorting
    the folders (what torchvision's ``ImageFolder`` does) gives back the dataset's label order.
    ``/``, ``\\`` and NUL in a name become ``_``; a name that is empty or just the label
    gives the bare label."""
    digits = len(str(max(len(names) - 1, 0)))
    folders = []
    for label, name in enumerate(names):
        prefix = f"{label:0{digits}d}"
        safe = name.replace("/", "_").replace("\\", "_").replace("\0", "_").strip()
        folders.append(prefix if safe in ("", prefix) else f"{prefix}_{safe}")
    return folders


def to_uint8(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Normalised float ``(N, C, H, W)`` -> uint8 ``(N, C, H, W)``, the inverse of
    :meth:`selmatch.data.ImageDataset.normalize` (clamped to [0, 255], rounded)."""
    x = images.detach().cpu().to(torch.float64)
    m = torch.tensor(mean, dtype=torch.float64).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float64).view(1, -1, 1, 1)
    return ((x * s + m) * 255.0).clamp(0.0, 255.0).round().to(torch.uint8)


def _pil_mode(channels: int) -> str:
    if channels == 1:
        return "L"
    if channels == 3:
        return "RGB"
    raise ExportError(
        f"--format imagefolder needs 1 (grayscale) or 3 (RGB) channels, the set has {channels}; "
        "use --format npz"
    )


# --------------------------------------------------------------------------- export
def export_set(
    set_dir: str | Path, out: str | Path, fmt: str = "imagefolder", *, overwrite: bool = False
) -> Exported:
    """Write the saved set in ``set_dir`` to ``out`` as ``fmt`` (``imagefolder`` or ``npz``).

    For ``npz``, ``.npz`` is appended to ``out`` when it lacks it. Refuses (:class:`ExportError`,
    naming ``--out``) to replace an existing non-empty ``out`` unless ``overwrite``; even then it
    only replaces a previous export (or a file, for ``npz``), never an unrelated folder.
    """
    fmt = check_choice("format", fmt, FORMATS)
    set_dir, out = Path(set_dir), Path(out)
    if not (set_dir / TENSOR_FILE).is_file() or not (set_dir / MANIFEST_FILE).is_file():
        raise SyntheticSetError(
            f"SET_DIR {set_dir} is not a saved set (needs {TENSOR_FILE} and {MANIFEST_FILE})"
        )
    saved = SyntheticSet.load(set_dir)
    manifest_text = (set_dir / MANIFEST_FILE).read_text()
    if fmt == "npz":
        if out.suffix != ".npz":
            out = out.with_name(out.name + ".npz")
        _check_target(out, overwrite, is_export=out.is_file())
        atomic_write(out, lambda p: _write_npz(p, saved, manifest_text))
    else:
        _check_target(out, overwrite, is_export=(out / LABELS_FILE).is_file())
        _write_tree_atomically(out, lambda tmp: _write_imagefolder(tmp, saved, manifest_text))
    return Exported(out, fmt, len(saved.labels), saved.num_distill)


def _check_target(out: Path, overwrite: bool, *, is_export: bool) -> None:
    if not out.exists() and not out.is_symlink():
        return
    if out.is_dir() and not out.is_symlink() and not any(out.iterdir()):
        return  # an empty folder is as good as none
    if not is_export:
        what = "folder" if out.is_dir() else "file"
        raise ExportError(
            f"--out {out} is a {what} that is not a selmatch export; refusing to replace it "
            "even with --overwrite (choose a new path)"
        )
    if not overwrite:
        raise ExportError(f"--out {out} holds an earlier export; pass --overwrite to replace it")


def _write_tree_atomically(out: Path, write: Callable[[Path], None]) -> None:
    """Fill a temporary folder beside ``out``, then swap it into place."""
    out.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(temporary, 0o777 & ~umask)  # mkdtemp makes 0700; give the folder normal permissions
    old: Path | None = None
    try:
        write(temporary)
        if out.is_dir():
            old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".old"))
            os.replace(out, old)  # move the previous export (or empty folder) aside
        os.replace(temporary, out)
    finally:
        for leftover in (temporary, old):
            if leftover is not None and leftover.exists():
                shutil.rmtree(leftover)


def _write_imagefolder(root: Path, saved: SyntheticSet, manifest_text: str) -> None:
    manifest = saved.manifest
    pixels = to_uint8(saved.images, manifest["mean"], manifest["std"])
    mode = _pil_mode(int(pixels.shape[1]))
    names = class_names(manifest)
    folders = folder_names(names)
    labels = saved.labels.tolist()
    if labels and not 0 <= min(labels) <= max(labels) < len(names):
        raise ExportError(f"labels of the set fall outside its {len(names)} classes")
    width = len(str(max(len(labels) - 1, 0)))
    rows = []
    for folder in sorted(set(folders[label] for label in labels)):
        (root / folder).mkdir()
    hwc = pixels.permute(0, 2, 3, 1).numpy()
    for index, (label, distilled) in enumerate(
        zip(labels, saved.distill_mask.tolist(), strict=True)
    ):
        file = f"{folders[label]}/{index:0{width}d}.png"
        array = hwc[index, :, :, 0] if mode == "L" else hwc[index]
        Image.fromarray(np.ascontiguousarray(array)).save(root / file, format="PNG")  # L/RGB
        rows.append((file, label, names[label], "distill" if distilled else "select"))
    with open(root / LABELS_FILE, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(LABELS_HEADER)
        writer.writerows(rows)
    (root / MANIFEST_FILE).write_text(manifest_text, encoding="utf-8")


def _write_npz(path: str, saved: SyntheticSet, manifest_text: str) -> None:
    manifest = saved.manifest
    arrays: dict[str, np.ndarray] = {
        "images": to_uint8(saved.images, manifest["mean"], manifest["std"])
        .permute(0, 2, 3, 1)
        .contiguous()
        .numpy(),
        "labels": saved.labels.to(torch.int64).numpy(),
        "distill_mask": saved.distill_mask.to(torch.bool).numpy(),
        "class_names": np.array(class_names(manifest), dtype=np.str_),
        "manifest": np.array(manifest_text, dtype=np.str_),
        "images_normalized": saved.images.detach().float().cpu().contiguous().numpy(),
        "mean": np.array(manifest["mean"], dtype=np.float32),
        "std": np.array(manifest["std"], dtype=np.float32),
    }
    if saved.source_indices is not None:
        arrays["source_indices"] = saved.source_indices.to(torch.int64).numpy()
    if saved.learned_lr is not None:
        arrays["learned_lr"] = np.array(saved.learned_lr, dtype=np.float64)
    with open(path, "wb") as handle:  # a handle: np.savez would append .npz to a path
        np.savez_compressed(handle, **arrays)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- load
class SyntheticImages(Dataset[tuple[Any, int]]):
    """A small labelled image set in memory, as :func:`load_synthetic` returns it.

    ``images`` are float32 ``(N, C, H, W)`` in [0, 1] (not normalised); item ``i`` is
    ``(images[i], label)``, or ``(transform(images[i]), label)`` when a transform is given.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        *,
        classes: Sequence[str],
        distill_mask: torch.Tensor,
        manifest: dict[str, Any],
        learned_lr: float | None = None,
        transform: Transform | None = None,
    ) -> None:
        n = images.shape[0]
        if images.dim() != 4 or labels.shape != (n,) or distill_mask.shape != (n,):
            raise ExportError("images, labels and distill_mask disagree in length")
        self.images = images
        self.labels = labels.to(torch.int64)
        self.classes = list(classes)
        self.distill_mask = distill_mask.to(torch.bool)
        self.manifest = manifest
        self.learned_lr = learned_lr
        self.transform = transform

    @property
    def mean(self) -> tuple[float, ...]:
        """The dataset's per-channel mean (for ``transforms.Normalize``)."""
        return tuple(float(m) for m in self.manifest["mean"])

    @property
    def std(self) -> tuple[float, ...]:
        """The dataset's per-channel std (for ``transforms.Normalize``)."""
        return tuple(float(s) for s in self.manifest["std"])

    @property
    def targets(self) -> list[int]:
        """The labels as a list (torchvision's name for them)."""
        return [int(label) for label in self.labels.tolist()]

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __getitem__(self, index: int) -> tuple[Any, int]:
        image = self.images[index]
        if self.transform is not None:
            return self.transform(image), int(self.labels[index])
        return image, int(self.labels[index])

    def __repr__(self) -> str:
        c, h, w = self.images.shape[1:]
        return (
            f"SyntheticImages({len(self)} images {c}x{h}x{w}, {len(self.classes)} classes, "
            f"{int(self.distill_mask.sum())} distilled, from {self.manifest.get('dataset')})"
        )


def load_synthetic(path: str | Path, transform: Transform | None = None) -> SyntheticImages:
    """Load a saved set folder, an exported ``.npz`` or an exported ImageFolder tree as a
    ``torch.utils.data.Dataset`` of ``(image, label)`` pairs.

    ``image`` is a float32 ``(C, H, W)`` tensor in [0, 1] (the set's normalisation undone), or
    ``transform(image)``: give tensor transforms (``transforms.v2``, or the v1 ones that accept
    tensors; not ``ToTensor``). ``label`` is an ``int``, in the dataset's class order. The result
    also has ``classes`` (class names by label), ``distill_mask`` (bool, True = ``D_distill``),
    ``manifest`` (the set's manifest), ``mean``/``std`` (the dataset's normalisation),
    ``labels``, ``targets``, ``images`` and ``learned_lr`` (None when the source does not keep
    it). No format is unpickled: safetensors, ``np.load(allow_pickle=False)``, PNG and CSV.

    Example, training a network on a distilled set::

        import torch
        from torch.utils.data import DataLoader
        from torchvision.transforms import v2

        import selmatch

        data = selmatch.load_synthetic("exports/fashion-ipc10.npz")  # or a set folder, a tree
        data.transform = v2.Compose([
            v2.RandomCrop(28, padding=4),
            v2.RandomHorizontalFlip(),
            v2.Normalize(data.mean, data.std),  # the networks expect normalised inputs
        ])
        loader = DataLoader(data, batch_size=64, shuffle=True)
        shape = tuple(data.images.shape[1:])
        model = selmatch.build_model(selmatch.ModelConfig(), shape, len(data.classes))
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        for epoch in range(300):
            for images, labels in loader:
                loss = torch.nn.functional.cross_entropy(model(images), labels)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
    """
    path = Path(path)
    if path.is_dir() and (path / TENSOR_FILE).is_file():
        data = _load_set_folder(path, transform)
    elif path.is_file() and path.suffix == ".npz":
        data = _load_npz(path, transform)
    elif path.is_dir() and (path / LABELS_FILE).is_file():
        data = _load_imagefolder(path, transform)
    else:
        raise ExportError(
            f"{path} is not a saved set folder ({TENSOR_FILE} + {MANIFEST_FILE}), an exported "
            f".npz file or an exported ImageFolder tree ({LABELS_FILE} + {MANIFEST_FILE})"
        )
    return data


def _load_set_folder(path: Path, transform: Transform | None) -> SyntheticImages:
    saved = SyntheticSet.load(path)
    manifest = saved.manifest
    images = denormalize(saved.images.float(), manifest["mean"], manifest["std"])
    return SyntheticImages(
        images,
        saved.labels,
        classes=class_names(manifest),
        distill_mask=saved.distill_mask,
        manifest=manifest,
        learned_lr=saved.learned_lr,
        transform=transform,
    )


def _load_npz(path: Path, transform: Transform | None) -> SyntheticImages:
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except (OSError, ValueError) as error:
        raise ExportError(f"{path} is not a readable .npz archive ({error})") from error
    missing = [k for k in ("images", "labels", "distill_mask", "manifest") if k not in arrays]
    if missing:
        raise ExportError(f"{path} is not a selmatch export (lacks {', '.join(missing)})")
    manifest = json.loads(str(arrays["manifest"]))
    pixels = torch.from_numpy(np.ascontiguousarray(arrays["images"], dtype=np.uint8))
    if "class_names" in arrays:
        classes = [str(name) for name in arrays["class_names"].tolist()]
    else:
        classes = class_names(manifest)
    lr = arrays.get("learned_lr")
    return SyntheticImages(
        pixels.permute(0, 3, 1, 2).float() / 255.0,
        torch.from_numpy(arrays["labels"].astype(np.int64)),
        classes=classes,
        distill_mask=torch.from_numpy(arrays["distill_mask"].astype(bool)),
        manifest=manifest,
        learned_lr=None if lr is None else float(lr),
        transform=transform,
    )


def _load_imagefolder(path: Path, transform: Transform | None) -> SyntheticImages:
    if not (path / MANIFEST_FILE).is_file():
        raise ExportError(f"{path} holds {LABELS_FILE} but no {MANIFEST_FILE}")
    manifest = json.loads((path / MANIFEST_FILE).read_text(encoding="utf-8"))
    text = (path / LABELS_FILE).read_text(encoding="utf-8")
    rows = list(csv.DictReader(io.StringIO(text)))
    if rows and set(LABELS_HEADER) - set(rows[0]):
        raise ExportError(f"{path / LABELS_FILE} needs the columns {', '.join(LABELS_HEADER)}")
    shape = manifest.get("image_shape")
    channels = int(shape[0]) if shape else None
    pictures = []
    for row in rows:
        with Image.open(path / row["file"]) as picture:
            mode = "L" if channels == 1 else "RGB" if channels == 3 else picture.mode
            array = np.asarray(picture.convert(mode), dtype=np.uint8)
        pictures.append(array[:, :, None] if array.ndim == 2 else array)
    if pictures:
        pixels = torch.from_numpy(np.stack(pictures)).permute(0, 3, 1, 2).contiguous()
    else:
        c, h, w = shape if shape else (1, 1, 1)
        pixels = torch.zeros(0, c, h, w, dtype=torch.uint8)
    bad = sorted({row["part"] for row in rows} - set(PARTS))
    if bad:
        raise ExportError(f"{path / LABELS_FILE}: part must be distill or select, got {bad[0]!r}")
    classes = class_names(manifest)
    for row in rows:  # a manifest without class names: take them from labels.csv
        label = int(row["label"])
        if "class_names" not in manifest and 0 <= label < len(classes):
            classes[label] = row["class"]
    return SyntheticImages(
        pixels.float() / 255.0,
        torch.tensor([int(row["label"]) for row in rows], dtype=torch.int64),
        classes=classes,
        distill_mask=torch.tensor([PARTS[row["part"]] for row in rows], dtype=torch.bool),
        manifest=manifest,
        transform=transform,
    )
