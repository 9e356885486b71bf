import json

import pytest
import torch

from selmatch.core.config import ConfigError
from selmatch.difficulty.scores import ScoreTable
from selmatch.training.experts import ExpertConfig, ExpertSet, train_experts, train_one_expert
from selmatch.training.models import ModelConfig, build_model
from selmatch.training.params import ParamLayout

TINY = ExpertConfig(
    model=ModelConfig(width=4), num_experts=2, epochs=2, per_class=20, batch_size=32, el2n_epoch=1
)


@pytest.fixture(scope="module")
def expert_dir(tmp_path_factory, fashion):
    directory = tmp_path_factory.mktemp("experts")
    train_experts(fashion, TINY, directory, device="cpu", progress=False)
    return directory


def test_trajectories_are_saved_and_loaded_bit_exact(expert_dir, fashion) -> None:
    experts = ExpertSet.load(expert_dir)
    assert experts.finished == [0, 1]
    assert experts.config == TINY
    from safetensors.torch import load_file

    indices = load_file(str(expert_dir / "indices.safetensors"))["train_indices"]
    tensors, _, layout = train_one_expert(fashion, TINY, 1, indices, device=torch.device("cpu"))
    saved = experts.trajectory(1)
    assert saved.shape == (TINY.epochs + 1, layout.numel) and saved.dtype == torch.float32
    for epoch in range(TINY.epochs + 1):
        assert torch.equal(saved[epoch], tensors[f"epoch_{epoch:04d}"])
    # epoch 0 is the initialisation of the seeded model
    init = build_model(TINY.model, fashion.image_shape, 10, seed=TINY.seed + 1)
    assert torch.equal(saved[0], ParamLayout.of(init).flatten(init))
    assert not torch.equal(saved[0], saved[-1])


def test_scores_cover_exactly_the_training_samples(expert_dir, fashion) -> None:
    table = ScoreTable.load(expert_dir)
    assert set(table.scores) == {"forgetting", "el2n"}
    for values in table.scores.values():
        assert values.shape == (60_000,)
        assert int(torch.isfinite(values).sum()) == 200
    assert table.info["val_fraction"] == TINY.val_fraction


def test_manifest_describes_the_run(expert_dir) -> None:
    manifest = json.loads((expert_dir / "manifest.json").read_text())
    assert manifest["kind"] == "selmatch-experts"
    assert ExpertConfig.from_dict(manifest["config"]) == TINY
    assert manifest["num_params"] == sum(
        torch.Size(s).numel() for s in manifest["layout"]["shapes"]
    )
    assert len(manifest["epoch_seconds"]) == 2 and manifest["mean_epoch_seconds"] > 0


def test_resume_trains_only_the_missing_experts(tmp_path, expert_dir, fashion) -> None:
    import shutil

    directory = tmp_path / "copy"
    shutil.copytree(expert_dir, directory)
    (directory / "expert_001.safetensors").unlink()
    kept = (directory / "expert_000.safetensors").stat().st_mtime_ns
    more = TINY.replace(num_experts=3)  # resume and extend
    train_experts(fashion, more, directory, device="cpu", progress=False)
    experts = ExpertSet.load(directory)
    assert experts.finished == [0, 1, 2]
    assert (directory / "expert_000.safetensors").stat().st_mtime_ns == kept
    assert torch.equal(experts.trajectory(1), ExpertSet.load(expert_dir).trajectory(1))


def test_other_settings_in_the_same_folder_are_refused(expert_dir, fashion) -> None:
    with pytest.raises(ConfigError, match=r"other settings \(lr\)"):
        train_experts(fashion, TINY.replace(lr=0.05), expert_dir, device="cpu", progress=False)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(el2n_epoch=3, epochs=2), r"--el2n-epoch must be an integer in \[1, 2\]"),
        (dict(num_experts=0), r"--num-experts must be an integer in \[1, 10000\]"),
        (dict(augment="blur"), "--augment must be one of"),
    ],
)
def test_bad_expert_settings(kwargs, message) -> None:
    with pytest.raises(ConfigError, match=message):
        ExpertConfig(**kwargs)
