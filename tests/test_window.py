"""Contract tests of the sliding window, for every score direction and both β conventions."""

import pytest
import torch

from selmatch.core.config import ConfigError
from selmatch.difficulty.scores import HIGHER_IS_HARDER, hardness
from selmatch.selection.window import WindowSpec, class_rankings, select_window

NUM_CLASSES = 3


def toy(class_sizes=(40, 50, 60), seed=0):
    """Labels and a raw score whose hardest samples we know."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate(class_sizes)])
    order = torch.randperm(len(labels), generator=gen)
    labels = labels[order]
    raw = torch.randperm(len(labels), generator=gen).to(torch.float64)  # distinct scores
    return labels, raw


@pytest.mark.parametrize("kind", sorted(HIGHER_IS_HARDER))
@pytest.mark.parametrize("convention", ["ipc-units", "data-fraction"])
def test_window_contract(kind, convention) -> None:
    labels, raw = toy()
    hard = hardness(raw, kind)
    pool = torch.arange(len(labels))
    spec = WindowSpec(ipc=8, beta=0.5, alpha=0.25, beta_convention=convention)
    window = select_window(hard, labels, NUM_CLASSES, spec, among=pool)
    # exactly IPC per class, no duplicates
    assert torch.bincount(window.labels, minlength=NUM_CLASSES).tolist() == [8, 8, 8]
    assert len(set(window.indices.tolist())) == 24
    # deterministic
    again = select_window(hard, labels, NUM_CLASSES, spec, among=pool)
    assert torch.equal(window.indices, again.indices)
    # hardest first, in the raw score's documented direction
    for c in range(NUM_CLASSES):
        members = torch.nonzero(labels == c).flatten()
        ranked = sorted(
            members.tolist(), key=lambda i: -raw[i] if HIGHER_IS_HARDER[kind] else raw[i]
        )
        skip = int(8 * 0.5) if convention == "ipc-units" else int(0.5 * len(members))
        assert window.indices[window.labels == c].tolist() == ranked[skip : skip + 8]


def test_exact_beta_offsets_of_both_conventions() -> None:
    labels, raw = toy(class_sizes=(100, 100, 100))
    rankings = class_rankings(raw, labels, NUM_CLASSES, torch.arange(300))
    code = select_window(raw, labels, NUM_CLASSES, WindowSpec(10, 0.7), among=torch.arange(300))
    paper = select_window(
        raw,
        labels,
        NUM_CLASSES,
        WindowSpec(10, 0.7, beta_convention="data-fraction"),
        among=torch.arange(300),
    )
    assert code.skipped == (7, 7, 7)  # int(IPC·β): 7 of each class, as the authors' code
    assert paper.skipped == (70, 70, 70)  # int(β·n_c): 70% of each class, as the paper text
    assert code.indices[:10].tolist() == rankings[0][7:17].tolist()
    assert paper.indices[:10].tolist() == rankings[0][70:80].tolist()


@pytest.mark.parametrize(
    ("alpha", "distill"), [(0.0, 0), (0.25, 2), (0.5, 5), (0.99, 9), (1.0, 10)]
)
def test_alpha_split_sizes_and_order(alpha, distill) -> None:
    labels, raw = toy()
    window = select_window(
        raw, labels, NUM_CLASSES, WindowSpec(10, 0.0, alpha), among=torch.arange(len(labels))
    )
    for c in range(NUM_CLASSES):
        in_class = window.labels == c
        assert int(window.distill_mask[in_class].sum()) == distill
        assert int(window.select_mask[in_class].sum()) == 10 - distill
        # D_select is the harder part: every selected sample is harder than every distilled one
        select_scores = raw[window.indices[in_class & window.select_mask]]
        distill_scores = raw[window.indices[in_class & window.distill_mask]]
        if len(select_scores) and len(distill_scores):
            assert select_scores.min() > distill_scores.max()
    assert torch.equal(window.select_mask, ~window.distill_mask)


def test_unscored_and_non_pool_samples_are_never_selected() -> None:
    labels, raw = toy()
    raw[:20] = float("nan")
    pool = torch.arange(10, len(labels))
    window = select_window(raw, labels, NUM_CLASSES, WindowSpec(30, 0.0), among=pool)
    assert window.indices.min() >= 20


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (dict(ipc=41), r"--ipc must be an integer in \[1, 40\], got 41"),
        (dict(ipc=10, beta=3.5), r"--beta must be in \[0, 3\] for IPC 10 with 40 scored"),
        (
            dict(ipc=10, beta=0.8, beta_convention="data-fraction"),
            r"--beta must be in \[0, 0.75\] for IPC 10",
        ),
    ],
)
def test_impossible_windows_are_one_line_errors(spec, message) -> None:
    labels, raw = toy()
    with pytest.raises(ConfigError, match=message):
        select_window(raw, labels, NUM_CLASSES, WindowSpec(**spec), among=torch.arange(len(labels)))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(ipc=0), r"--ipc must be an integer in \[1, ∞\]"),
        (dict(ipc=5, beta=-0.1), r"--beta must be a number in \[0, ∞\)"),
        (dict(ipc=5, alpha=1.5), r"--alpha must be a number in \[0, 1\]"),
        (dict(ipc=5, beta_convention="percent"), "--beta-convention must be one of ipc-units"),
    ],
)
def test_bad_window_settings(kwargs, message) -> None:
    with pytest.raises(ConfigError, match=message):
        WindowSpec(**kwargs)
