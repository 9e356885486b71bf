"""Option groups shared by the subcommands, and their translation into configs."""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
from pathlib import Path
from typing import Any, Literal, NoReturn

from selmatch.cli import options
from selmatch.core.artifacts import check_out
from selmatch.core.config import ConfigError
from selmatch.data import ImageDataset, dataset_help, holdout_split, load_dataset
from selmatch.data.balance import HoldoutSplit
from selmatch.difficulty.scores import ScoreTable
from selmatch.evaluation.evaluate import SEEDS, EvalConfig, budget_epochs, paper_epochs
from selmatch.training.augment import DSAConfig
from selmatch.training.models import NETWORK, ModelConfig
from selmatch.training.train import TRAINING, TrainConfig

#: the training settings whose options are made from TrainConfig's fields as they are (the
#: epochs and the augmentation take more on the command line than the config holds)
TRAIN_OPTIONS = ("lr", "batch_size", "momentum", "weight_decay", "schedule")


class OneLineParser(argparse.ArgumentParser):
    """argparse whose usage errors are one line, like every other error of the command:
    ``TOOL: error: MESSAGE (see PROG --help)``, exit code 2, instead of the usage block."""

    def error(self, message: str) -> NoReturn:
        tool = Path(self.prog.split()[0]).stem  # "selmatch", or "search_alpha_beta"
        self.exit(2, f"{tool}: error: {message} (see {self.prog} --help)\n")


def check_output(
    path: Path | None,
    kind: Literal["folder", "file", "any"],
    *,
    writes: str,
    accepts: tuple[str, ...] = (),
    flag: str = "--out",
) -> None:
    """Refuse, before any work, an ``--out`` that cannot be written: a folder output that is an
    existing file, a file output that is an existing folder, a path below a file, or one where
    the command's artifact (``writes``, a kind of :data:`selmatch.core.artifacts.ARTIFACTS`) would
    overwrite or mix with another kind of artifact (:func:`selmatch.core.artifacts.check_out`)."""
    if path is None:
        return
    if kind == "folder" and path.exists() and not path.is_dir():
        raise ConfigError(
            f"{flag} {path} is a file; give a folder (a new one, or one this command wrote)"
        )
    if kind == "file" and path.is_dir():
        raise ConfigError(f"{flag} {path} is a folder; give a file name, e.g. {path / 'out.json'}")
    below = next((p for p in path.parents if p.exists() or p.is_symlink()), None)
    if below is not None and not below.is_dir():
        raise ConfigError(f"{flag} {path} lies below {below}, which is a file, not a folder")
    check_out(path, writes, accepts=accepts, flag=flag)


def add_data_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("data")
    group.add_argument(
        "--dataset",
        default="fashion-mnist",
        metavar="NAME",
        help=f"dataset to use (default: fashion-mnist). Known: {dataset_help()}",
    )
    group.add_argument(
        "--data-root",
        type=Path,
        default=None,
        metavar="DIR",
        help="folder holding the dataset files (default: $SELMATCH_DATA_ROOT; Fashion-MNIST "
        "falls back to /usr/share/datasets/fashion-mnist)",
    )
    group.add_argument(
        "--download",
        action="store_true",
        help="let torchvision download CIFAR / Tiny ImageNet into --data-root (needs a network)",
    )
    group.add_argument(
        "--image-size",
        type=int,
        default=None,
        metavar="PX",
        help="resize imagefolder images to PX x PX (needed when their sizes differ)",
    )
    group.add_argument(
        "--skip-bad-images",
        action="store_true",
        help="leave out image files that cannot be decoded (truncated, unreadable, not images) "
        "and say how many, naming the first (default: stop at the first one, naming it)",
    )
    group.add_argument(
        "--val-fraction",
        type=float,
        default=0.02,
        metavar="F",
        help="fraction of each class of the training set held out as the validation slice that "
        "every model-selection decision uses; the test set only reports (default: 0.02)",
    )
    group.add_argument(
        "--split-seed",
        type=int,
        default=0,
        metavar="S",
        help="seed of the validation hold-out (default: 0; keep it fixed across a study)",
    )


def load_images(args: argparse.Namespace) -> ImageDataset:
    """The dataset the data options name; says how many files --skip-bad-images left out."""
    dataset = load_dataset(
        args.dataset,
        data_root=args.data_root,
        download=args.download,
        image_size=args.image_size,
        skip_bad_images=args.skip_bad_images,
    )
    skipped = dataset.skipped_summary()
    if skipped:
        print(f"selmatch: warning: {skipped}", file=sys.stderr)
    return dataset


def load_data(args: argparse.Namespace) -> tuple[ImageDataset, HoldoutSplit]:
    dataset = load_images(args)
    split = holdout_split(
        dataset.train_labels,
        dataset.num_classes,
        val_fraction=args.val_fraction,
        seed=args.split_seed,
    )
    return dataset, split


def add_model_options(parser: argparse.ArgumentParser, *, default_width: int = 128) -> None:
    """``--model`` (the field ``name``, read as ``args.model``), ``--width``, ``--depth`` and
    ``--norm``, from ModelConfig's fields; ``default_width`` is the command's network's."""
    group = parser.add_argument_group(NETWORK)
    options.add_option(group, ModelConfig, "name", dest="model")
    options.add_option(group, ModelConfig, "width", default=default_width)
    options.add_option(group, ModelConfig, "depth")
    options.add_option(group, ModelConfig, "norm")


def model_config(args: argparse.Namespace) -> ModelConfig:
    return ModelConfig(name=args.model, width=args.width, depth=args.depth, norm=args.norm)


def add_train_options(
    parser: argparse.ArgumentParser, *, epochs_help: str, default_augment: str = "dsa"
) -> None:
    """TrainConfig's options. ``--epochs`` is a string (E, ``paper`` or ``full:F``: see
    :func:`parse_epochs`) whose text is the command's ``epochs_help``; ``--augment`` also takes
    ``auto``; ``--dsa-strategy`` (read as ``args.dsa_strategy``) sets ``dsa.strategy``."""
    group = parser.add_argument_group(TRAINING)
    field, epochs = options.field_setting(TrainConfig, "epochs")
    group.add_argument(
        "--epochs",
        default=str(field.default),
        metavar="E|paper|full:F",
        help=options.help_text(dataclasses.replace(epochs, help=epochs_help), field.default),
    )
    options.add_options(parser, TrainConfig, TRAIN_OPTIONS, groups={TRAINING: group})
    _, augment = options.field_setting(TrainConfig, "augment")
    auto = "; auto = combined for a saved set with a mask, else dsa"
    group.add_argument(
        "--augment",
        default=default_augment,
        choices=("auto", *augment.choices),
        help=options.help_text(
            dataclasses.replace(augment, help=augment.help + auto), default_augment
        ),
    )
    options.add_option(group, DSAConfig, "strategy", dest="dsa_strategy")


def parse_epochs(text: str, set_size: int, n_full: int) -> int:
    """``--epochs`` takes a number, ``paper`` (the rule of :func:`paper_epochs`) or
    ``full:F`` (the steps of F epochs over the full training pool, :func:`budget_epochs`)."""
    if text == "paper":
        return paper_epochs(set_size, n_full)
    budget = re.fullmatch(r"full:(\d+(?:\.\d*)?|\.\d+)", text)
    if budget and float(budget.group(1)) > 0:
        return budget_epochs(set_size, n_full, float(budget.group(1)))
    if not re.fullmatch(r"\d+", text) or int(text) < 1:
        raise ConfigError(
            f"--epochs must be a positive integer, 'paper' or 'full:F' with F > 0, got {text!r}"
        )
    return int(text)


def train_config(args: argparse.Namespace, *, epochs: int, augment: str) -> TrainConfig:
    return TrainConfig(
        epochs=epochs,
        augment=augment,
        dsa=DSAConfig(strategy=args.dsa_strategy),
        **options.values(args, TRAIN_OPTIONS),
    )


def add_seed_options(parser: argparse.ArgumentParser) -> None:
    """EvalConfig's ``--seeds`` (the field ``num_seeds``, read as ``args.seeds``) and
    ``--seed``, and the device options."""
    group = parser.add_argument_group(SEEDS)
    options.add_option(group, EvalConfig, "num_seeds", dest="seeds")
    options.add_option(group, EvalConfig, "seed")
    add_device_options(group)


def add_device_options(group: argparse._ActionsContainer, *, progress: bool = True) -> None:
    """``--device`` (and ``--no-progress``), the same for every command."""
    group.add_argument(
        "--device",
        default="auto",
        help="cpu, cuda, cuda:1, ... (default: auto = CUDA when present, else CPU)",
    )
    if progress:
        group.add_argument("--no-progress", action="store_true", help="hide the progress bars")


def eval_config(args: argparse.Namespace, train: TrainConfig) -> EvalConfig:
    return EvalConfig(
        model=model_config(args),
        train=train,
        num_seeds=args.seeds,
        seed=args.seed,
        device=args.device,
    )


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")


def add_score_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("difficulty")
    group.add_argument(
        "--scores",
        type=Path,
        default=None,
        metavar="DIR",
        help="folder with scores.safetensors (default: runs/experts/<dataset>, where "
        "`selmatch experts` writes them)",
    )
    # declared once, in SetSpec: the same option in window, distill and coverage
    from selmatch.distillation.target import SetSpec

    options.add_option(group, SetSpec, "score")
    options.add_option(group, SetSpec, "beta_convention")


def load_hardness(args: argparse.Namespace, dataset: ImageDataset, split: HoldoutSplit) -> Any:
    """The chosen score as "higher is harder", after checking it belongs to this data split."""
    directory = args.scores or Path("runs") / "experts" / slug(dataset.name)
    table = ScoreTable.load(directory).checked(
        "--scores", directory, dataset, split.val_fraction, split.seed
    )
    return table.hardness(args.score)
