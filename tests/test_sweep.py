import json

import pytest
import torch

from selmatch.core.config import ConfigError
from selmatch.evaluation import sweep as sweep_module
from selmatch.evaluation.evaluate import EvalConfig
from selmatch.evaluation.sweep import SweepConfig, window_sweep
from selmatch.training.models import ModelConfig
from selmatch.training.train import TrainConfig

FAST = EvalConfig(
    model=ModelConfig(width=4), train=TrainConfig(epochs=2), num_seeds=1, device="cpu"
)


@pytest.fixture(scope="module")
def fake_hardness(fashion):
    # A real score needs experts; any fixed per-sample number exercises the sweep machinery.
    return torch.rand(60_000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


@pytest.mark.slow
def test_sweep_writes_table_plot_and_resumes_after_a_failure(
    tmp_path, fashion, fashion_split, fake_hardness, monkeypatch
) -> None:
    config = SweepConfig(ipc=3, betas=(0.0, 1.0, 2.0), evaluation=FAST)
    real = sweep_module.evaluate_window
    calls = []

    def fail_on_second(*args, **kwargs):
        calls.append(args[3].beta)
        if len(calls) == 2:
            raise RuntimeError("injected failure")
        return real(*args, **kwargs)

    monkeypatch.setattr(sweep_module, "evaluate_window", fail_on_second)
    with pytest.raises(RuntimeError, match="injected"):
        window_sweep(fashion, fashion_split, fake_hardness, config, tmp_path, progress=False)
    saved = json.loads((tmp_path / "sweep.json").read_text())
    assert list(saved["rows"]) == ["0.0"]  # the finished β survived the failure

    monkeypatch.setattr(sweep_module, "evaluate_window", real)
    result = window_sweep(fashion, fashion_split, fake_hardness, config, tmp_path, progress=False)
    assert sorted(result.rows) == [0.0, 1.0, 2.0]
    assert result.rows[0.0] == saved["rows"]["0.0"]  # reused, not retrained
    assert result.best_beta in (0.0, 1.0, 2.0)
    best = max(result.rows, key=lambda b: result.rows[b]["val_mean"])
    assert result.best_beta == best  # chosen on validation accuracy
    csv_lines = (tmp_path / "sweep.csv").read_text().splitlines()
    assert csv_lines[0].startswith("beta,val_mean") and csv_lines[-1].startswith("random,")
    assert len(csv_lines) == 5
    assert (tmp_path / "sweep.png").stat().st_size > 10_000


def test_a_sweep_with_other_settings_is_not_mixed_in(
    tmp_path, fashion, fashion_split, fake_hardness
) -> None:
    config = SweepConfig(ipc=2, betas=(0.0,), evaluation=FAST)
    window_sweep(fashion, fashion_split, fake_hardness, config, tmp_path, progress=False)
    other = config.replace(score="el2n")
    with pytest.raises(Exception, match="other settings"):
        window_sweep(fashion, fashion_split, fake_hardness, other, tmp_path, progress=False)


def test_a_sweep_resumed_with_other_scores_or_data_is_refused(
    tmp_path, fashion, fashion_split, fake_hardness
) -> None:
    import dataclasses

    config = SweepConfig(ipc=2, betas=(0.0,), evaluation=FAST)
    window_sweep(fashion, fashion_split, fake_hardness, config, tmp_path, progress=False)
    saved = (tmp_path / "sweep.json").read_text()
    other_scores = fake_hardness.flip(0)
    with pytest.raises(ConfigError, match="^--scores: .* ranked by other scores"):
        window_sweep(fashion, fashion_split, other_scores, config, tmp_path, progress=False)
    images = fashion.train_images.clone()
    images[0] ^= 1
    other_data = dataclasses.replace(fashion, train_images=images)
    with pytest.raises(ConfigError, match="holds a window sweep made from fashion-mnist"):
        window_sweep(other_data, fashion_split, fake_hardness, config, tmp_path, progress=False)
    assert (tmp_path / "sweep.json").read_text() == saved


def test_sweep_validates_every_beta_up_front() -> None:
    with pytest.raises(Exception, match="--beta must be a number"):
        SweepConfig(ipc=2, betas=(0.0, -1.0))
