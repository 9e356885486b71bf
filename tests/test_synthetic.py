import json

import pytest
import torch

from selmatch.synthetic import SyntheticSet, SyntheticSetError


def make_set(n: int = 6) -> SyntheticSet:
    return SyntheticSet(
        images=torch.randn(n, 1, 28, 28),
        labels=torch.arange(n) % 3,
        distill_mask=torch.arange(n) % 2 == 0,
        manifest={"dataset": "fashion-mnist", "mean": [0.286], "std": [0.353],
                  "num_classes": 10, "ipc": 2, "method": "test"},
        learned_lr=0.0123,
        source_indices=torch.arange(n) * 7,
    )  # fmt: skip


def test_save_and_load_round_trip(tmp_path) -> None:
    original = make_set()
    original.save(tmp_path / "set")
    loaded = SyntheticSet.load(tmp_path / "set")
    assert torch.equal(loaded.images, original.images)
    assert torch.equal(loaded.labels, original.labels)
    assert torch.equal(loaded.distill_mask, original.distill_mask)
    assert torch.equal(loaded.source_indices, original.source_indices)
    assert loaded.learned_lr == pytest.approx(0.0123)
    assert loaded.manifest["num_distill"] == 3 and loaded.manifest["versions"]["selmatch"]
    assert sorted(p.name for p in (tmp_path / "set").iterdir()) == [
        "manifest.json",
        "set.safetensors",
    ]  # no temporary files left behind


def test_loading_something_else_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(SyntheticSetError, match="is not a saved set"):
        SyntheticSet.load(tmp_path)
    make_set().save(tmp_path)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    (tmp_path / "manifest.json").write_text(json.dumps(manifest | {"format_version": 99}))
    with pytest.raises(SyntheticSetError, match="newer selmatch"):
        SyntheticSet.load(tmp_path)


def test_inconsistent_sets_are_refused() -> None:
    with pytest.raises(SyntheticSetError, match="disagree in length"):
        SyntheticSet(torch.zeros(3, 1, 8, 8), torch.zeros(2), torch.zeros(3), {})
    with pytest.raises(SyntheticSetError, match="manifest lacks dataset"):
        SyntheticSet(torch.zeros(2, 1, 8, 8), torch.zeros(2), torch.zeros(2), {})
