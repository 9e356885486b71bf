"""Expert trajectories, with the difficulty scores gathered during the same training.

``train_experts`` trains K networks on the real training pool (the training set minus the
validation slice) and keeps every expert's parameters after every epoch (epoch 0 is the
initialisation). While they train it counts forgetting events from each mini-batch's own
predictions (no extra pass), and after epoch ``el2n_epoch`` it makes the one inference pass
over the pool that EL2N needs.

On disk (``directory/``), all pickle-free:

- ``manifest.json``: ``kind = "selmatch-experts"``, the :class:`ExpertConfig`, the parameter
  layout (names and shapes, to map a flat vector back onto the model), seconds per epoch,
  versions;
- ``indices.safetensors``: ``train_indices`` (what the experts trained on), ``val_indices``;
- ``expert_000.safetensors``, ...: ``epoch_0000`` ... ``epoch_EEEE`` (flat float32 parameter
  vectors) and the expert's ``forgetting`` and ``el2n`` scores (float64, one per training
  sample, NaN where not scored);
- ``scores.safetensors`` + ``scores.json``: the scores averaged over experts.

An expert file is written (atomically) when that expert finishes, so an interrupted run keeps
the finished experts, and running the same command again trains only the missing ones.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from selmatch.core.config import (
    Config,
    ConfigError,
    SelmatchError,
    check_int,
    check_resumable,
    setting,
)
from selmatch.core.io import (
    atomic_write,
    open_safetensors,
    read_json,
    read_safetensors,
    versions,
    write_json,
)
from selmatch.core.migrate import EXPERTS_MANIFEST, migrate
from selmatch.core.progress import progress_bar
from selmatch.data import ImageDataset, balanced_subset, holdout_split, smallest_class_size
from selmatch.data.identity import DATA_KEY, check_data, data_identity
from selmatch.difficulty.score_kinds import EL2N, FORGETTING, ExpertScore, of_kind
from selmatch.difficulty.scores import (
    SCORES_FILE,
    ForgettingTracker,
    ScoreTable,
    combine_expert_scores,
    el2n_scores,
)
from selmatch.training.models import ModelConfig, build_model
from selmatch.training.params import ParamLayout
from selmatch.training.train import TrainConfig, resolve_device, train_network

MANIFEST = "manifest.json"
#: What trains one expert: its index in, (tensors, epoch seconds, layout) out.
TrainOne = Callable[[int], tuple[dict[str, torch.Tensor], list[float], ParamLayout]]
#: Runs a ``TrainOne`` over indices and yields the results in order (``map``, or Ray tasks).
Mapper = Callable[
    [TrainOne, Iterable[int]], Iterator[tuple[dict[str, torch.Tensor], list[float], ParamLayout]]
]
INDICES = "indices.safetensors"
#: the ``--help`` sections of the experts' settings
EXPERT_TRAINING, DATA = "expert training", "data"
#: what an expert may be trained with (``combined`` needs a set's mask)
EXPERT_AUGMENTATIONS = ("none", "crop_flip", "dsa")


@dataclass(frozen=True)
class ExpertConfig(Config):
    """How the experts are trained. Defaults follow the authors' code (METHOD.md): plain SGD,
    lr 0.01, no momentum or weight decay, constant lr, batch 256, DSA; except the number of
    experts and epochs, which are CPU-sized here (the paper: 100 experts of 100 epochs)."""

    dataset: str = setting(
        "fashion-mnist",
        group=DATA,
        metavar="NAME",
        help="the data the experts learn: fashion-mnist, cifar10, cifar100, tiny-imagenet or "
        "imagefolder:<path>",
    )
    model: ModelConfig = setting(
        factory=ModelConfig,
        cli=False,
        help="the experts' network (--model, --width, --depth, --norm)",
    )
    num_experts: int = setting(
        2,
        metavar="N",
        paper="100",
        group=EXPERT_TRAINING,
        help="expert trajectories to train, in [1, 10000]; a rerun with a larger N trains "
        "only the new ones",
    )
    epochs: int = setting(
        20,
        paper="100, with T+ = 80",
        group=EXPERT_TRAINING,
        help="epochs per expert, i.e. its trajectory's length (at least T+ + M for the "
        "distillation), in [1, 10000]",
    )
    lr: float = setting(
        0.01, group=EXPERT_TRAINING, help="SGD learning rate of the experts, constant"
    )
    batch_size: int = setting(256, group=EXPERT_TRAINING, help="mini-batch size, at least 2")
    momentum: float = setting(0.0, group=EXPERT_TRAINING, help="SGD momentum, in [0, 1)")
    weight_decay: float = setting(0.0, group=EXPERT_TRAINING, help="SGD weight decay, in [0, 1]")
    augment: str = setting(
        "dsa",
        choices=EXPERT_AUGMENTATIONS,
        group=EXPERT_TRAINING,
        paper="none, in effect, in the authors' code; MTT's experts use dsa",
        help="augmentation while training experts: none, crop_flip (pad 4 + horizontal flip) "
        "or dsa (MTT's DSA operations)",
    )
    el2n_epoch: int = setting(
        1, group=EXPERT_TRAINING, help="EL2N is measured after this epoch, in [1, --epochs]"
    )
    per_class: int | None = setting(
        None,
        metavar="N",
        group=EXPERT_TRAINING,
        help="train on a class-balanced part of N samples per class instead of the whole pool "
        "(a CPU budget knob; only those samples get scores; default: all)",
    )
    seed: int = setting(
        0,
        metavar="S",
        group=EXPERT_TRAINING,
        help="expert i trains with seed S+i; S also draws the --per-class part",
    )
    val_fraction: float = setting(
        0.02,
        metavar="F",
        group=DATA,
        help="fraction of each class of the training set held out as the validation slice "
        "that every model-selection decision uses; the experts never train on it",
    )
    split_seed: int = setting(0, metavar="S", group=DATA, help="seed of the validation hold-out")

    def __post_init__(self) -> None:
        check_int("num_experts", self.num_experts, 1, 10_000)
        check_int("epochs", self.epochs, 1, 10_000)
        check_int("batch_size", self.batch_size, 2, 1_000_000)
        self.train_config()  # the training settings are checked where they are defined
        check_int("el2n_epoch", self.el2n_epoch, 1, self.epochs)
        if self.per_class is not None:
            check_int("per_class", self.per_class, 1)
        check_int("seed", self.seed, 0, 2**31 - 1)

    def train_config(self) -> TrainConfig:
        return TrainConfig(
            epochs=self.epochs,
            lr=self.lr,
            batch_size=self.batch_size,
            momentum=self.momentum,
            weight_decay=self.weight_decay,
            schedule="constant",
            augment=self.augment,
        )

    def identity(self) -> dict[str, Any]:
        """Everything that makes one expert what it is (more experts may be added later)."""
        return {k: v for k, v in self.to_dict().items() if k != "num_experts"}


def expert_file(directory: Path, index: int) -> Path:
    return directory / f"expert_{index:03d}.safetensors"


class _ExpertRecorder:
    """Training hooks: the trajectory, forgetting events and the EL2N pass."""

    def __init__(
        self,
        dataset: ImageDataset,
        train_indices: torch.Tensor,
        config: ExpertConfig,
        layout: ParamLayout,
        device: torch.device,
        *,
        scores: bool = True,
    ) -> None:
        self.dataset, self.train_indices, self.config = dataset, train_indices, config
        self.layout, self.device, self.scores = layout, device, scores
        self.trajectory: list[torch.Tensor] = []
        self.forgetting = ForgettingTracker(len(train_indices))
        self.el2n: torch.Tensor | None = None
        self.epoch_seconds: list[float] = []
        self._last = time.perf_counter()

    def on_batch(self, indices: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> None:
        if self.scores:
            self.forgetting.update(indices, logits.argmax(dim=1) == labels)

    def on_epoch_end(self, epoch: int, model: nn.Module) -> None:
        self.trajectory.append(self.layout.flatten(model).cpu())
        if self.scores and epoch == self.config.el2n_epoch:
            idx = self.train_indices
            self.el2n = el2n_scores(
                model,
                self.dataset.train_images[idx],
                self.dataset.train_labels[idx],
                num_classes=self.dataset.num_classes,
                device=self.device,
                normalize=self.dataset.normalize,
            )
        now = time.perf_counter()
        self.epoch_seconds.append(now - self._last)
        self._last = now

    def full_length(self, values: torch.Tensor) -> torch.Tensor:
        out = torch.full((len(self.dataset.train_labels),), float("nan"), dtype=torch.float64)
        out[self.train_indices] = values
        return out


def expert_training_indices(
    dataset: ImageDataset, config: ExpertConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """(training indices, validation indices) of the experts: the pool, or a class-balanced
    ``per_class`` part of it (a CPU budget knob)."""
    split = holdout_split(
        dataset.train_labels,
        dataset.num_classes,
        val_fraction=config.val_fraction,
        seed=config.split_seed,
    )
    if config.per_class is None:
        return split.pool, split.val
    available = smallest_class_size(dataset.train_labels, dataset.num_classes, split.pool)
    if config.per_class > available:
        raise ConfigError(
            f"--per-class must be an integer in [1, {available}], got {config.per_class}"
        )
    chosen = balanced_subset(
        dataset.train_labels,
        dataset.num_classes,
        config.per_class,
        seed=config.seed,
        among=split.pool,
    )
    return chosen.sort().values, split.val


def _check_directory(directory: Path, config: ExpertConfig, dataset: ImageDataset) -> None:
    manifest_path = directory / MANIFEST
    if not manifest_path.is_file():
        return
    saved = read_json(manifest_path)
    if not isinstance(saved, dict) or not isinstance(saved.get("config"), dict):
        raise ConfigError(
            f"--out {directory}: its {MANIFEST} is not an experts manifest with its settings (a "
            "damaged folder); pick another --out"
        )
    saved = migrate(EXPERTS_MANIFEST, saved, manifest_path)
    check_resumable(
        ExpertConfig.from_dict(saved["config"]),
        config,
        f"--out {directory} holds experts made with other settings ({{changed}}); use another "
        "--out or the same settings to resume",
        may_change=("num_experts",),  # more experts may be added later
    )
    check_data(saved.get(DATA_KEY), dataset, f"--out {directory} holds experts")


def train_one_expert(
    dataset: ImageDataset,
    config: ExpertConfig,
    index: int,
    train_indices: torch.Tensor,
    *,
    device: torch.device,
    progress: bool = False,
) -> tuple[dict[str, torch.Tensor], list[float], ParamLayout]:
    """Train expert ``index`` (seed ``config.seed + index``); returns its tensors (trajectory
    and scores), the seconds each epoch took, and the parameter layout."""
    seed = config.seed + index
    model = build_model(config.model, dataset.image_shape, dataset.num_classes, seed=seed)
    return record_expert(
        model,
        dataset,
        config,
        train_indices,
        seed=seed,
        device=device,
        progress=progress,
        desc=f"expert {index}",
    )


def record_expert(
    model: nn.Module,
    dataset: ImageDataset,
    config: ExpertConfig,
    train_indices: torch.Tensor,
    *,
    seed: int,
    device: torch.device,
    progress: bool = False,
    desc: str = "expert",
    scores: bool = True,
) -> tuple[dict[str, torch.Tensor], list[float], ParamLayout]:
    """Train ``model`` from wherever it stands on the real images ``train_indices`` as
    ``config`` says, recording its parameters before the first and after every epoch: the
    one way an expert trajectory is made (SeqMatch's stage experts start from a network that
    has already learnt from earlier synthetic subsets). ``scores=False`` skips the difficulty
    scores (and EL2N's inference pass) that only the ordinary experts need."""
    layout = ParamLayout.of(model)
    recorder = _ExpertRecorder(dataset, train_indices, config, layout, device, scores=scores)
    recorder.trajectory.append(layout.flatten(model).cpu())
    train_network(
        model,
        dataset.train_images[train_indices],
        dataset.train_labels[train_indices],
        config.train_config(),
        seed=seed,
        device=device,
        normalize=dataset.normalize,
        hooks=recorder,
        progress=progress,
        desc=desc,
    )
    tensors = {f"epoch_{e:04d}": flat for e, flat in enumerate(recorder.trajectory)}
    if scores:
        assert recorder.el2n is not None  # el2n_epoch <= epochs is checked by the config
        tensors[FORGETTING.name] = recorder.full_length(recorder.forgetting.scores())
        tensors[EL2N.name] = recorder.full_length(recorder.el2n)
    return tensors, recorder.epoch_seconds, layout


def train_experts(
    dataset: ImageDataset,
    config: ExpertConfig,
    directory: str | Path,
    *,
    device: str = "auto",
    progress: bool = True,
) -> Path:
    """Train the missing experts of ``directory`` and (re)write the averaged scores."""
    if dataset.name != config.dataset:
        raise ConfigError(f"config is for {config.dataset}, dataset is {dataset.name}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    _check_directory(directory, config, dataset)
    torch_device = resolve_device(device)
    train_indices, val_indices = expert_training_indices(dataset, config)
    save_file(
        {"train_indices": train_indices, "val_indices": val_indices}, str(directory / INDICES)
    )
    layout = ParamLayout.of(build_model(config.model, dataset.image_shape, dataset.num_classes))
    train = partial(
        train_one_expert,
        dataset,
        config,
        train_indices=train_indices,
        device=torch_device,
        progress=progress,
    )
    data = data_identity(dataset)
    fill_expert_folder(
        directory, config, layout, train, progress=progress, desc="experts", data=data
    )
    write_expert_scores(directory, config, data)
    return directory


def fill_expert_folder(
    directory: Path,
    config: ExpertConfig,
    layout: ParamLayout,
    train: TrainOne,
    *,
    progress: bool,
    desc: str,
    mapper: Mapper = map,
    data: Mapping[str, Any] | None = None,
) -> None:
    """Train the experts ``0 .. config.num_experts - 1`` that ``directory`` lacks with
    ``train(index)``, writing each file atomically as it finishes (so an interruption keeps
    the finished ones) and the manifest after each. ``mapper(train, indices)`` yields the
    results in the order of ``indices``: the built-in ``map`` trains them one after another
    here, a search passes one that runs them as parallel Ray tasks. ``data`` (the dataset's
    :func:`selmatch.data.identity.data_identity`) goes into the manifest."""
    timing = _read_manifest_timing(directory)
    _write_manifest(directory, config, layout, timing, data)
    todo = [i for i in range(config.num_experts) if not expert_file(directory, i).is_file()]
    results = zip(todo, mapper(train, todo), strict=True)
    for index, (tensors, seconds, _) in progress_bar(
        results, desc=desc, enabled=progress, total=len(todo)
    ):
        atomic_write(expert_file(directory, index), partial(save_file, tensors))
        timing[str(index)] = seconds
        _write_manifest(directory, config, layout, timing, data)


def _read_manifest_timing(directory: Path) -> dict[str, list[float]]:
    path = directory / MANIFEST
    return json.loads(path.read_text()).get("epoch_seconds", {}) if path.is_file() else {}


def _write_manifest(
    directory: Path,
    config: ExpertConfig,
    layout: ParamLayout,
    timing: dict[str, list[float]],
    data: Mapping[str, Any] | None = None,
) -> None:
    all_seconds = [s for values in timing.values() for s in values]
    manifest = {
        "kind": "selmatch-experts",
        EXPERTS_MANIFEST.key: EXPERTS_MANIFEST.version,
        "config": config.to_dict(),
        "layout": layout.to_dict(),
        "num_params": layout.numel,
        "epoch_seconds": timing,
        "mean_epoch_seconds": sum(all_seconds) / len(all_seconds) if all_seconds else None,
        "versions": versions(),
    }
    if data is not None:
        manifest[DATA_KEY] = dict(data)
    write_json(directory / MANIFEST, manifest)


def write_expert_scores(
    directory: Path, config: ExpertConfig, data: Mapping[str, Any] | None = None
) -> ScoreTable:
    """Average the experts' scores into the folder's table, recording ``data`` (the dataset's
    :func:`selmatch.data.identity.data_identity`). Other scores the table holds (an imported
    C-score, consistency) are kept."""
    files = sorted(directory.glob("expert_*.safetensors"))
    made = {s.name: s.higher_is_harder for s in of_kind(ExpertScore)}  # forgetting, el2n
    per_expert = [{k: v for k, v in load_file(str(f)).items() if k in made} for f in files]
    info = {
        "dataset": config.dataset,
        "source": f"{len(files)} expert(s) in {directory}",
        "el2n_epoch": config.el2n_epoch,
        "expert_epochs": config.epochs,
        "val_fraction": config.val_fraction,
        "split_seed": config.split_seed,
    }
    if data is not None:
        info[DATA_KEY] = dict(data)
    table = ScoreTable(combine_expert_scores(per_expert), made, info)
    if (directory / SCORES_FILE).is_file():
        table = ScoreTable.load(directory).merged(table)
    table.save(directory)
    return table


@dataclass
class ExpertSet:
    """Saved experts: manifest, layout and lazily loaded trajectories. Matching reads them a
    few snapshots at a time (:meth:`snapshots`, memory-mapped), never a whole trajectory."""

    directory: Path
    config: ExpertConfig
    layout: ParamLayout
    manifest: dict[str, Any]
    _opened: dict[int, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def load(cls, directory: str | Path) -> ExpertSet:
        directory = Path(directory)
        path = directory / MANIFEST
        if not path.is_file():
            raise SelmatchError(f"--experts {directory} holds no experts (no {MANIFEST})")
        manifest = read_json(path)
        if not isinstance(manifest, dict) or manifest.get("kind") != "selmatch-experts":
            raise SelmatchError(f"{path} is not a selmatch experts manifest")
        manifest = migrate(EXPERTS_MANIFEST, manifest, path)
        missing = [k for k in ("config", "layout") if not isinstance(manifest.get(k), dict)]
        if missing:
            raise SelmatchError(f"{path} lacks {', '.join(missing)}")
        config = ExpertConfig.from_dict(manifest["config"])
        return cls(directory, config, ParamLayout.from_dict(manifest["layout"]), manifest)

    @property
    def finished(self) -> list[int]:
        return sorted(
            int(f.stem.split("_")[1]) for f in self.directory.glob("expert_*.safetensors")
        )

    def check_data(self, dataset: ImageDataset, flag: str = "--experts") -> ExpertSet:
        """These experts, after checking they were trained on ``dataset`` (its name and, where
        the manifest recorded it, its content)."""
        if self.config.dataset != dataset.name:
            raise ConfigError(
                f"{flag} {self.directory} holds experts of {self.config.dataset}, not "
                f"{dataset.name}"
            )
        check_data(self.manifest.get(DATA_KEY), dataset, f"{flag} {self.directory} holds experts")
        return self

    def trajectory(self, index: int) -> torch.Tensor:
        """Expert ``index``'s parameters, one row per epoch: ``(epochs + 1, num_params)``."""
        tensors = read_safetensors(expert_file(self.directory, index))
        epochs = sorted(k for k in tensors if k.startswith("epoch_"))
        return torch.stack([tensors[k] for k in epochs])

    def trajectories(self) -> list[torch.Tensor]:
        return [self.trajectory(i) for i in self.finished]

    def snapshots(self, index: int, epochs: Sequence[int]) -> torch.Tensor:
        """Expert ``index``'s parameters after each of ``epochs``: ``(len(epochs), P)``, read
        from its memory-mapped file (only these rows are copied)."""
        if index not in self._opened:
            handle = open_safetensors(expert_file(self.directory, index))
            keys = sorted(k for k in handle.keys() if k.startswith("epoch_"))  # noqa: SIM118
            self._opened[index] = (handle, keys)
        handle, keys = self._opened[index]
        _check_epochs(index, epochs, 0, len(keys))
        return torch.stack([handle.get_tensor(keys[e]) for e in epochs])


@dataclass
class InMemoryExperts:
    """Experts held in memory: the same interface as :class:`ExpertSet` for
    :func:`selmatch.distillation.distill.distill`. ``loaded[i]`` is expert ``i``'s trajectory from
    epoch
    ``first_epoch`` on (the epochs matching can reach: a search keeps only those), a tensor
    or an array-like such as a read-only view of Ray's object store; ``loaded`` may fetch
    each one when indexed (a lazy sequence), so only the experts drawn are ever read."""

    config: ExpertConfig
    layout: ParamLayout
    loaded: Sequence[Any]
    directory: Path = Path("in-memory")
    first_epoch: int = 0

    @property
    def finished(self) -> list[int]:
        return list(range(len(self.loaded)))

    def trajectory(self, index: int) -> torch.Tensor:
        return torch.as_tensor(self.loaded[index])

    def trajectories(self) -> list[torch.Tensor]:
        return [self.trajectory(i) for i in self.finished]

    def snapshots(self, index: int, epochs: Sequence[int]) -> torch.Tensor:
        """As :meth:`ExpertSet.snapshots`: only these rows are copied out of ``loaded``."""
        trajectory = self.loaded[index]
        _check_epochs(index, epochs, self.first_epoch, self.first_epoch + len(trajectory))
        rows = [e - self.first_epoch for e in epochs]
        if isinstance(trajectory, torch.Tensor):
            return trajectory[rows]
        return torch.from_numpy(np.ascontiguousarray(trajectory[rows]))


def _check_epochs(index: int, epochs: Sequence[int], low: int, high: int) -> None:
    if any(e < low or e >= high for e in epochs):
        raise ConfigError(
            f"expert {index} holds epochs {low} to {high - 1}, matching asked for "
            f"{', '.join(map(str, epochs))}: lower --max-start-epoch or --expert-epochs"
        )


class Experts(Protocol):
    """What a distillation reads of its experts: their settings, parameter layout, folder (the
    set's provenance), the finished ones, and snapshots of a trajectory."""

    @property
    def config(self) -> ExpertConfig: ...

    @property
    def layout(self) -> ParamLayout: ...

    @property
    def directory(self) -> Path: ...

    @property
    def finished(self) -> list[int]: ...

    def snapshots(self, index: int, epochs: Sequence[int]) -> torch.Tensor: ...
