"""The window sweep: accuracy of the window subset at each β of a grid (the paper's Fig. 3).

:func:`evaluate_window` is one β trial — select the window, train on it, score — and is the
trial body the β search calls. :func:`window_sweep` runs it over a grid, next to a random
class-balanced subset of the same size, picks the best β on *validation* accuracy, and writes
``sweep.csv``, ``sweep.json`` and ``sweep.png``. Finished β values are kept in ``sweep.json``;
running the same sweep again skips them (resume).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from selmatch.core.config import (
    Config,
    ConfigError,
    check_choice,
    check_int,
    check_resumable,
    setting,
)
from selmatch.core.io import read_json, write_json
from selmatch.core.plots import save_curve
from selmatch.core.progress import progress_bar
from selmatch.data import HoldoutSplit, ImageDataset
from selmatch.data.identity import DATA_KEY, check_data, data_identity, tensor_digest
from selmatch.difficulty.score_kinds import score_setting
from selmatch.evaluation.evaluate import EvalConfig, EvalResult, evaluate_set
from selmatch.selection.initial import RealInit, WindowInit
from selmatch.selection.window import BETA_CONVENTIONS, WindowSpec, beta_convention_setting

DEFAULT_BETAS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)  # the authors' sweep


@dataclass(frozen=True)
class SweepConfig(Config):
    """One IPC's sweep: the window at each β of ``betas``, and a random class-balanced subset
    of the same size, each evaluated with ``evaluation``."""

    ipc: int = setting(
        help="images per class of each window and of the random subset", metavar="IPC"
    )
    betas: tuple[float, ...] = setting(
        DEFAULT_BETAS,
        symbol="β",
        metavar="B1,B2,...",
        help="window starts to evaluate, comma-separated, each ≥ 0 and read in "
        "--beta-convention; the default grid is the authors' sweep",
    )
    beta_convention: str = beta_convention_setting()
    score: str = score_setting()
    evaluation: EvalConfig = setting(
        factory=EvalConfig,
        cli=False,
        help="how the networks of every window and of the random subset are trained and scored",
    )
    random_subset_seed: int = setting(
        0, flag="--subset-seed", help="seed of the random baseline subset"
    )

    def __post_init__(self) -> None:
        check_int("ipc", self.ipc, 1)
        check_choice("beta_convention", self.beta_convention, BETA_CONVENTIONS)
        if not self.betas:
            raise ConfigError("--betas needs at least one value")
        for beta in self.betas:
            WindowSpec(self.ipc, beta, 0.0, self.beta_convention)  # validates each β


def evaluate_window(
    dataset: ImageDataset,
    split: HoldoutSplit,
    hardness: torch.Tensor,
    spec: WindowSpec,
    config: EvalConfig,
    *,
    progress: bool = False,
) -> EvalResult:
    """One β trial: train ``config.num_seeds`` networks on the window subset and score them."""
    window = WindowInit(spec).select(dataset, split, hardness)  # as a distillation starts
    return evaluate_set(
        dataset.train_images[window.indices],
        window.labels,
        dataset,
        config,
        split=split,
        progress=progress,
    )


def evaluate_random(
    dataset: ImageDataset, split: HoldoutSplit, ipc: int, config: EvalConfig, *, seed: int
) -> EvalResult:
    subset = RealInit(ipc, seed).select(dataset, split, None)  # MTT's start, as it is
    return evaluate_set(
        dataset.train_images[subset.indices], subset.labels, dataset, config, split=split
    )


@dataclass
class SweepResult:
    config: SweepConfig
    rows: dict[float, dict[str, Any]]
    random: dict[str, Any]

    @property
    def best_beta(self) -> float:
        """The β with the highest *validation* accuracy (test accuracy if there is no
        validation slice); ties go to the smaller β."""
        key = (
            "val_mean"
            if all(r["val_mean"] is not None for r in self.rows.values())
            else "test_mean"
        )
        return max(sorted(self.rows), key=lambda b: self.rows[b][key])

    def table(self) -> str:
        lines = [f"{'beta':>6} {'val %':>14} {'test %':>14}"]
        for beta in sorted(self.rows):
            lines.append(
                f"{beta:>6g} {_pct(self.rows[beta], 'val')} {_pct(self.rows[beta], 'test')}"
            )
        lines.append(f"{'random':>6} {_pct(self.random, 'val')} {_pct(self.random, 'test')}")
        return "\n".join(lines)


def _pct(row: dict[str, Any], kind: str) -> str:
    mean, std = row[f"{kind}_mean"], row[f"{kind}_std"]
    return f"{'n/a':>14}" if mean is None else f"{100 * mean:>7.2f} ± {100 * std:<4.2f}"


def _load_previous(
    path: Path, config: SweepConfig, dataset: ImageDataset, ranking: str
) -> tuple[dict[float, Any], dict[str, Any] | None]:
    """The rows a sweep in ``path`` finished, checked to be this sweep: the same settings, the
    same data and the same ranking (``ranking``: the digest of the hardness it ranked by)."""
    if not path.is_file():
        return {}, None
    saved = read_json(path)
    check_resumable(
        SweepConfig.from_dict(saved["config"]),
        config,
        f"--out {path.parent} holds a sweep with other settings ({{changed}}); use another "
        "--out or the same settings to resume",
        may_change=("betas",),
    )
    inputs = saved.get("inputs") or {}
    check_data(inputs.get(DATA_KEY), dataset, f"--out {path.parent} holds a window sweep")
    if inputs.get("ranking") not in (None, ranking):
        raise ConfigError(
            f"--scores: --out {path.parent} holds a sweep ranked by other scores than --scores "
            f"and --score give now; use the ones it was made with, or another --out"
        )
    return {float(b): row for b, row in saved["rows"].items()}, saved.get("random")


def window_sweep(
    dataset: ImageDataset,
    split: HoldoutSplit,
    hardness: torch.Tensor,
    config: SweepConfig,
    directory: str | Path,
    *,
    progress: bool = True,
) -> SweepResult:
    """Evaluate the window at every β of ``config.betas`` and a random subset; write results."""
    directory = Path(directory)
    ranking = tensor_digest(hardness)
    inputs = {DATA_KEY: data_identity(dataset), "ranking": ranking}
    rows, random_row = _load_previous(directory / "sweep.json", config, dataset, ranking)
    evaluation = config.evaluation
    if random_row is None:
        random_row = evaluate_random(
            dataset, split, config.ipc, evaluation, seed=config.random_subset_seed
        ).to_dict()
    result = SweepResult(config, rows, random_row)
    todo = [b for b in config.betas if b not in rows]
    for beta in progress_bar(todo, desc=f"β sweep, IPC {config.ipc}", enabled=progress):
        spec = WindowSpec(config.ipc, beta, 0.0, config.beta_convention)
        rows[beta] = evaluate_window(dataset, split, hardness, spec, evaluation).to_dict()
        _write(directory, result, inputs)  # after every β: an interruption loses at most one trial
    result.rows = {b: rows[b] for b in config.betas}
    _write(directory, result, inputs)
    return result


def _write(directory: Path, result: SweepResult, inputs: dict[str, Any]) -> None:
    config = result.config
    betas = sorted(result.rows)
    write_json(
        directory / "sweep.json",
        {
            "config": config.to_dict(),
            "inputs": inputs,
            "rows": {str(b): result.rows[b] for b in betas},
            "random": result.random,
            "best_beta_by_val": result.best_beta if betas else None,
        },
    )
    with open(directory / "sweep.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["beta", "val_mean", "val_std", "test_mean", "test_std"])
        for beta in betas:
            row = result.rows[beta]
            writer.writerow(
                [beta, row["val_mean"], row["val_std"], row["test_mean"], row["test_std"]]
            )
        r = result.random
        writer.writerow(["random", r["val_mean"], r["val_std"], r["test_mean"], r["test_std"]])
    if not betas:
        return
    curves = [("window, test", [result.rows[b]["test_mean"] for b in betas])]
    baselines = [("random, test", result.random["test_mean"])]
    if result.random["val_mean"] is not None:
        curves.insert(0, ("window, val", [result.rows[b]["val_mean"] for b in betas]))
        baselines.insert(0, ("random, val", result.random["val_mean"]))
    ev = config.evaluation
    save_curve(
        betas,
        curves,
        directory / "sweep.png",
        xlabel=f"β ({config.beta_convention})",
        title=f"{config.score} window, IPC {config.ipc}\n{ev.model.describe()}, "
        f"{ev.train.epochs} epochs, {ev.num_seeds} seed(s)",
        baselines=baselines,
        best_x=result.best_beta,
    )
