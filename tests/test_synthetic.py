import json

import pytest
import torch

from selmatch.sets.synthetic import SyntheticSet, SyntheticSetError


def make_set(n: int = 6) -> SyntheticSet:
    return SyntheticSet(
        images=torch.randn(n, 1, 28, 28),
        labels=torch.arange(n) % 3,
        distill_mask=torch.arange(n) % 2 == 0,
        manifest={
            "dataset": "fashion-mnist",
            "mean": [0.286],
            "std": [0.353],
            "num_classes": 10,
            "ipc": 2,
            "method": "test",
        },
        learned_lr=0.0123,
        source_indices=torch.arange(n) * 7,
    )


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


def _rewrite(folder, **changes) -> None:
    """The saved set in ``folder`` with some tensors replaced (``None``: removed)."""
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(folder / "set.safetensors")) | changes
    save_file({k: v for k, v in tensors.items() if v is not None}, str(folder / "set.safetensors"))


NAN_IMAGES = torch.zeros(6, 1, 28, 28).index_fill_(0, torch.tensor([2]), float("nan"))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (dict(images=NAN_IMAGES), "NaN or infinite pixels in 1 of the 6 images"),
        (
            dict(images=torch.full((6, 1, 28, 28), float("inf"))),
            "NaN or infinite pixels in 6 of the 6",
        ),
        (
            dict(images=torch.zeros(6, 1, 28, 28, dtype=torch.uint8)),
            r"images must be float \(N, C, H, W\), got torch.uint8",
        ),
        (dict(images=torch.zeros(6, 28, 28)), r"images must be float \(N, C, H, W\)"),
        (
            dict(images=torch.zeros(6, 1, 32, 32)),
            r"images are \(1, 32, 32\), the manifest says \(1, 28, 28\)",
        ),
        (dict(images=torch.zeros(6, 3, 28, 28)), "mean and std need one value per image channel"),
        (dict(images=torch.zeros(5, 1, 28, 28)), "5 images, the manifest says 6"),
        (dict(labels=torch.tensor([0, 1, 2, 3, 4, 10])), r"labels must lie in \[0, 10\)"),
        (dict(labels=torch.tensor([0, 1, 2, 3, 4, -1])), r"labels must lie in \[0, 10\)"),
        (dict(labels=torch.zeros(6)), "labels must be 6 integers"),
        (dict(labels=torch.zeros(5, dtype=torch.int64)), "labels must be 6 integers"),
        (dict(distill_mask=torch.ones(5, dtype=torch.uint8)), "distill_mask must be 6 zeros"),
        (dict(distill_mask=torch.full((6,), 2, dtype=torch.uint8)), "distill_mask must be 6"),
        (dict(source_indices=-torch.ones(6, dtype=torch.int64)), "source_indices must be 6"),
        (dict(learned_lr=torch.tensor([float("nan")])), "learned_lr must be finite"),
    ],
)
def test_a_saved_set_is_checked_at_load(tmp_path, changes, message) -> None:
    make_set().save(tmp_path)
    _rewrite(tmp_path, **changes)
    with pytest.raises(SyntheticSetError, match=message) as caught:
        SyntheticSet.load(tmp_path)
    assert str(caught.value).startswith(str(tmp_path) + "/")  # the file: set or manifest
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (dict(num_classes="ten"), "num_classes must be an integer ≥ 1"),
        (dict(num_classes=0), "num_classes must be an integer ≥ 1"),
        (dict(image_shape=[28, 28]), r"image_shape must be \[C, H, W\]"),
    ],
)
def test_a_manifest_s_shape_and_classes_are_checked(tmp_path, changes, message) -> None:
    make_set().save(tmp_path)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    (tmp_path / "manifest.json").write_text(json.dumps(manifest | changes))
    with pytest.raises(SyntheticSetError, match=message) as caught:
        SyntheticSet.load(tmp_path)
    assert str(caught.value).startswith(str(tmp_path / "manifest.json"))


def test_a_set_written_without_shape_or_size_still_loads(tmp_path) -> None:
    make_set().save(tmp_path)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    del manifest["image_shape"], manifest["size"]
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    _rewrite(tmp_path, distill_mask=torch.tensor([True, False] * 3), source_indices=None)
    loaded = SyntheticSet.load(tmp_path)
    assert loaded.num_distill == 3 and loaded.source_indices is None
