"""Fixtures of the search's tests: one smoke search for the whole session (the search's tests
and the notebook's read the same folder; each smoke search costs a minute or more on CI's two
cores), and a local Ray per module for the tests that run searches of their own."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import ray

from selmatch_tune.flow.search import run_search
from selmatch_tune.settings.presets import smoke


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def smoke_search(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, list[dict[str, Any]]]:
    """The smoke preset's search, run once: its folder and its table's rows. Tests only read
    it (a test that resumes one copies it first); its parent holds the expert cache, which
    later searches beside it reuse. It runs on the module's Ray when one is up, else on its
    own, shut down after."""
    out = tmp_path_factory.mktemp("search") / "smoke"
    own = not ray.is_initialized()
    if own:
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        with pytest.MonkeyPatch.context() as patch:
            # MLflow puts a new experiment's artifacts under ./mlruns: keep them out of the
            # checkout (a local store keeps them under --out anyway)
            patch.chdir(out.parent)
            rows = run_search(smoke(), out, log=lambda *_: None)
    finally:
        if own:
            ray.shutdown()
    return out, rows


@pytest.fixture
def trial_spec() -> Any:
    """A maker of small trial specs (IPC 2, EL2N, one CPU, no GPU) with the changes given:
    what the tests of trial specs start from."""
    return _trial_spec


def _trial_spec(**changes: Any) -> Any:
    from selmatch.evaluation.evaluate import EvalConfig
    from selmatch_tune.flow.trials import TrialSpec

    settings: dict[str, Any] = {
        "ipc": 2,
        "beta_convention": "data-fraction",
        "score": "el2n",
        "val_fraction": 0.02,
        "split_seed": 0,
        "cpus_per_trial": 1,
        "gpus_per_trial": 0,
        "evaluation": EvalConfig(),
    }
    return TrialSpec(**{**settings, **changes})
