"""Presets fitted to the data they are given, the validation warning, a search folder that
counts as a search only once its precompute finished, and the README's own-data command on a
small folder (no Ray: settings, state files and ``--dry-run``)."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from selmatch.core.config import ConfigError
from selmatch.data import holdout_split
from selmatch_tune.results.record import STATE, open_record
from selmatch_tune.settings.config import fit_to_data, validation_warning
from selmatch_tune.settings.presets import quick

ROOT = Path(__file__).resolve().parents[2]


def _labels(per_class: int, classes: int = 10) -> torch.Tensor:
    return torch.arange(classes).repeat_interleave(per_class)


def _fit(config, per_class: int):
    """``fit_to_data`` on 10 classes of ``per_class`` images, with the experts' hold-out."""
    labels = _labels(per_class)
    split = holdout_split(
        labels, 10, val_fraction=config.experts.val_fraction, seed=config.experts.split_seed
    )
    return fit_to_data(config, labels, 10, split)


def test_quick_preset_fits_a_folder_of_150_images_per_class() -> None:
    config = quick().replace(ipcs=(10, 50, 200), predict_ipcs=(100, 300))
    fitted, changes = _fit(config, 150)
    # the pool keeps 150 - 10 (the validation floor) images of each class
    assert fitted.experts.per_class == 140
    assert fitted.consistency.per_class == 140
    assert fitted.ipcs == (10, 50) and fitted.predict_ipcs == (100,)
    assert any(line.startswith("experts.per_class 1000 → 140") for line in changes)
    assert any(line.startswith("consistency.per_class 1000 → 140") for line in changes)
    assert any("IPCs 200 dropped" in line for line in changes)
    assert any("predicted IPCs 300 dropped" in line for line in changes)
    # fitting again changes nothing: a resumed search compares the same settings
    assert _fit(fitted, 150) == (fitted, [])


def test_a_large_dataset_is_left_as_it_is() -> None:
    config = quick()
    assert _fit(config, 6000) == (config, [])


def test_no_ipc_left_is_an_error_naming_the_flag() -> None:
    with pytest.raises(ConfigError, match=r"--ipcs must be at most 140 .*got \[200, 300\]"):
        _fit(quick().replace(ipcs=(200, 300)), 150)


def test_validation_warning_compares_one_image_with_the_margin() -> None:
    config = quick().replace(noise=0.005)
    warning = validation_warning(config, 100)
    assert warning is not None and "100 images" in warning and "1.00 points" in warning
    assert validation_warning(config, 200) is None  # 0.50 points: not above the margin
    assert validation_warning(config, 0) is None


def test_a_start_that_never_finished_precompute_does_not_block(tmp_path) -> None:
    config, lines = quick(), []
    record = open_record(tmp_path, config, resume=False)
    assert record.started is False and not (tmp_path / STATE).exists()  # writes nothing
    record.save(tmp_path)  # e.g. a run stopped while its experts trained
    for resume in (False, True):
        again = open_record(tmp_path, config, resume=resume, log=lines.append)
        assert again.started is False and again.ipcs == {}
    assert "stopped before its first trial" in lines[0]
    record.started = True
    record.save(tmp_path)
    with pytest.raises(ConfigError, match="holds a search already; add --resume"):
        open_record(tmp_path, config, resume=False)
    assert open_record(tmp_path, config, resume=True).started is True


def test_resume_of_an_empty_folder_is_an_error(tmp_path) -> None:
    with pytest.raises(ConfigError, match="holds no search"):
        open_record(tmp_path, quick(), resume=True)
    assert json.dumps(list(tmp_path.iterdir())) == "[]"


def _readme_own_data_command() -> str:
    """The README's own-dataset search command, continuation lines joined."""
    text = (ROOT / "README.md").read_text()
    match = re.search(
        r"^python tune/search_alpha_beta\.py --preset quick --dataset imagefolder:"
        r"(?:.*\\\n)*.*$",
        text,
        flags=re.M,
    )
    assert match, "the README lost its own-dataset command"
    return match.group(0).replace("\\\n", " ")


def test_the_readmes_own_data_command_fits_a_small_folder(own_folder, tmp_path) -> None:
    """The README's command unchanged but for the folder, checked with ``--dry-run`` (the same
    checks as the search, nothing started): a full run of it is in the closing note of issue
    20, the search itself on such a folder in tests/tune/test_search.py."""
    command = _readme_own_data_command()
    folder = re.search(r"imagefolder:(\S+)", command).group(1)
    command = command.replace(f"imagefolder:{folder}", own_folder)
    out = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, *shlex.split(command)[1:], "--out", str(out), "--dry-run"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert any(
        line.startswith(f"fitted to {own_folder}: experts.per_class 1000 → 140") for line in lines
    ), done.stdout
    assert any(line.startswith("WARNING: the validation slice holds 100 images") for line in lines)
    assert "would search IPCs [10, 20]" in done.stdout and "(a new search)" in done.stdout
    assert lines[-1] == "dry run: nothing was started or written"
    assert not out.exists()


def test_the_dataset_is_declared_once_and_passed_down() -> None:
    """The experts and the consistency networks learn the search's data: a dataset chosen on
    the search reaches both, and a saved config reads back the same."""
    from selmatch_tune.settings.config import SearchConfig
    from selmatch_tune.settings.presets import paper

    config = quick().replace(dataset="cifar10")
    assert (config.experts.dataset, config.consistency.dataset) == ("cifar10", "cifar10")
    assert SearchConfig.from_dict(config.to_dict()) == config
    assert paper().experts.dataset == paper().consistency.dataset == "cifar10"
