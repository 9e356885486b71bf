import json
import subprocess
import sys

import pytest
import torch

from selmatch.data import balanced_subset
from selmatch.evaluation.evaluate import EvalConfig, evaluate_set, paper_epochs
from selmatch.training.models import ModelConfig
from selmatch.training.train import TrainConfig


@pytest.mark.parametrize(("ratio", "epochs"), [(0.05, 1000), (0.1, 500), (0.2, 250), (0.3, 167)])
def test_paper_epoch_rule(ratio, epochs) -> None:
    assert paper_epochs(round(50_000 * ratio), 50_000) == epochs


@pytest.mark.slow
def test_short_evaluation_beats_chance_by_far(fashion, fashion_split) -> None:
    subset = balanced_subset(fashion.train_labels, 10, 10, seed=0, among=fashion_split.pool)
    config = EvalConfig(
        model=ModelConfig(width=16), train=TrainConfig(epochs=60), num_seeds=2, device="cpu"
    )
    result = evaluate_set(
        fashion.train_images[subset],
        fashion.train_labels[subset],
        fashion,
        config,
        split=fashion_split,
    )
    test_mean, _ = result.test_mean_std
    val_mean, _ = result.val_mean_std
    assert test_mean > 0.55 and val_mean > 0.55  # chance is 0.10
    assert len(result.test_accuracy) == 2 and result.seeds == (0, 1)
    assert result.test_accuracy[0] != result.test_accuracy[1]  # seeds really differ


SCRIPT = """
import sys, torch
from safetensors.torch import save_file
from selmatch.data import load_dataset, balanced_subset
from selmatch.training.models import ModelConfig, build_model
from selmatch.training.train import TrainConfig, train_network
data = load_dataset("fashion-mnist")
idx = balanced_subset(data.train_labels, 10, 5, seed=3)
model = build_model(ModelConfig(width=8), data.image_shape, 10, seed=11)
train_network(model, data.train_images[idx], data.train_labels[idx],
              TrainConfig(epochs=4, batch_size=16), seed=11, device=torch.device("cpu"),
              normalize=data.normalize)
save_file({k: v.contiguous() for k, v in model.state_dict().items()}, sys.argv[1])
"""


@pytest.mark.slow
def test_same_seed_is_bit_identical_in_a_fresh_process(tmp_path) -> None:
    from safetensors.torch import load_file

    paths = [tmp_path / "a.safetensors", tmp_path / "b.safetensors"]
    for path in paths:
        subprocess.run([sys.executable, "-c", SCRIPT, str(path)], check=True)
    first, second = (load_file(str(p)) for p in paths)
    assert first.keys() == second.keys()
    for key in first:
        assert torch.equal(first[key], second[key]), key


def test_result_serialises(fashion, fashion_split) -> None:
    subset = balanced_subset(fashion.train_labels, 10, 2, seed=0, among=fashion_split.pool)
    config = EvalConfig(model=ModelConfig(width=4), train=TrainConfig(epochs=1), num_seeds=1)
    result = evaluate_set(
        fashion.train_images[subset], fashion.train_labels[subset], fashion, config
    )
    payload = json.loads(json.dumps(result.to_dict(), allow_nan=False))
    assert payload["set_size"] == 20 and payload["epochs"] == 1
    assert payload["val_accuracy"] == [None] and payload["val_mean"] is None  # no split given
    assert 0.0 <= payload["test_mean"] <= 1.0


def test_a_full_data_epoch_budget_gives_every_set_size_the_same_steps() -> None:
    from selmatch.evaluation.evaluate import budget_epochs

    assert budget_epochs(600, 58_800, 2.0) == 196  # 1% of Fashion-MNIST's pool: 196 epochs
    assert budget_epochs(5_880, 58_800, 2.0) == 20
    assert budget_epochs(58_800, 58_800, 0.1) == 1  # never zero
    for size in (600, 1_200, 3_000, 5_880):
        steps = budget_epochs(size, 58_800, 2.0) * size
        assert abs(steps - 2 * 58_800) <= size / 2  # equal images seen, up to rounding
    assert paper_epochs(5_000, 50_000) == budget_epochs(5_000, 50_000, 50.0)
