"""Exporting a saved set (ImageFolder tree, .npz) and loading any form back as a Dataset."""

import csv
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

import selmatch
from selmatch.cli import main
from selmatch.sets.export import ExportError, export_set, folder_names, load_synthetic
from selmatch.sets.synthetic import SyntheticSet

IPC = 3


@pytest.fixture(scope="module")
def saved(tmp_path_factory, fashion) -> tuple[Path, torch.Tensor, torch.Tensor]:
    """A real Fashion-MNIST set of IPC 3: one learned (noised, partly out of range) image and two
    real ones per class. Returns the folder, the source uint8 images and the mask."""
    generator = torch.Generator().manual_seed(0)
    indices = torch.cat(
        [torch.nonzero(fashion.train_labels == c)[:IPC, 0] for c in range(fashion.num_classes)]
    )
    pixels = fashion.train_images[indices]
    mask = torch.arange(len(indices)) % IPC == 0
    images = fashion.normalize(pixels)
    images[mask] += 1.5 * torch.randn(images[mask].shape, generator=generator)
    directory = tmp_path_factory.mktemp("export") / "set"
    SyntheticSet(
        images,
        fashion.train_labels[indices],
        mask,
        {
            "dataset": "fashion-mnist",
            "mean": list(fashion.mean),
            "std": list(fashion.std),
            "num_classes": 10,
            "class_names": list(fashion.class_names),
            "ipc": IPC,
            "method": "test",
        },
        learned_lr=0.01,
        source_indices=indices,
    ).save(directory)
    return directory, pixels, mask


@pytest.fixture(scope="module")
def exported(saved) -> dict[str, Path]:
    directory = saved[0]
    out = directory.parent
    assert main(["export", str(directory), "--out", str(out / "tree")]) == 0
    assert main(["export", str(directory), "--out", str(out / "arrays"), "--format", "npz"]) == 0
    return {"set": directory, "imagefolder": out / "tree", "npz": out / "arrays.npz"}


def test_cli_says_where_and_how_many(saved, tmp_path, capsys) -> None:
    out = tmp_path / "tree"
    assert main(["export", str(saved[0]), "--out", str(out), "--format", "imagefolder"]) == 0
    printed = capsys.readouterr().out
    assert "exported 30 images (10 distilled, 20 selected)" in printed
    assert str(out.resolve()) in printed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tree"]  # no temporary folder left


def test_all_three_forms_load_to_the_same_set(exported, fashion) -> None:
    loaded = {form: load_synthetic(path) for form, path in exported.items()}
    reference = loaded["set"]
    assert len(reference) == 30
    for form, data in loaded.items():
        assert torch.equal(data.labels, reference.labels), form
        assert torch.equal(data.distill_mask, reference.distill_mask), form
        assert data.classes == list(fashion.class_names), form
        assert data.manifest == reference.manifest, form
        assert data.mean == fashion.mean and data.std == fashion.std, form
        assert data.images.dtype == torch.float32 and data.images.shape == (30, 1, 28, 28)
        assert data.images.min() >= 0.0 and data.images.max() <= 1.0
        # PNG/uint8 quantisation: within half a grey level of the stored (clamped) image
        assert (data.images - reference.images).abs().max() <= 0.5 / 255 + 1e-6, form
    assert torch.equal(loaded["npz"].images, loaded["imagefolder"].images)
    image, label = reference[4]
    assert image.shape == (1, 28, 28) and isinstance(label, int) and label == 1
    assert loaded["npz"].learned_lr == pytest.approx(0.01)
    assert loaded["imagefolder"].learned_lr is None


def test_real_images_come_back_as_the_exact_bytes(exported, saved) -> None:
    _, pixels, mask = saved
    with np.load(exported["npz"], allow_pickle=False) as archive:
        images = torch.from_numpy(archive["images"]).permute(0, 3, 1, 2)
        stored = torch.from_numpy(archive["images_normalized"])
    assert torch.equal(images[~mask], pixels[~mask])
    assert torch.equal(stored, SyntheticSet.load(exported["set"]).images)
    rows = _labels_csv(exported["imagefolder"])
    for index in range(len(rows)):
        with Image.open(exported["imagefolder"] / rows[index]["file"]) as picture:
            png = torch.from_numpy(np.array(picture))
        assert torch.equal(png, images[index, 0])  # the PNGs hold the npz's pixels
        if not mask[index]:
            assert rows[index]["file"].endswith(f"/{index:02d}.png")
            assert torch.equal(png, pixels[index, 0])


def _labels_csv(root: Path) -> list[dict[str, str]]:
    with open(root / "labels.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def test_imagefolder_layout(exported, fashion, saved) -> None:
    root, mask = exported["imagefolder"], saved[2]
    folders = sorted(p.name for p in root.iterdir() if p.is_dir())
    names = fashion.class_names
    expected = [f"{label}_{name.replace('/', '_')}" for label, name in enumerate(names)]
    assert folders == expected and folders[0] == "0_T-shirt_top"
    assert {p.name for p in root.iterdir() if p.is_file()} == {"labels.csv", "manifest.json"}
    for folder in expected:
        pngs = list((root / folder).iterdir())
        assert len(pngs) == IPC and all(p.suffix == ".png" for p in pngs)
    rows = _labels_csv(root)
    assert list(rows[0]) == ["file", "label", "class", "part"]
    assert [r["part"] == "distill" for r in rows] == mask.tolist()
    assert Counter(r["part"] for r in rows) == {"distill": 10, "select": 20}
    labels = SyntheticSet.load(exported["set"]).labels.tolist()
    assert [int(r["label"]) for r in rows] == labels
    for row in rows:
        label = int(row["label"])
        assert row["class"] == fashion.class_names[label]
        assert row["file"].split("/")[0] == expected[label]
    with Image.open(root / rows[0]["file"]) as picture:
        assert picture.mode == "L" and picture.size == (28, 28)
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest == json.loads((exported["set"] / "manifest.json").read_text())


def test_imagefolder_tree_reads_with_torchvision(exported, fashion) -> None:
    from torchvision.datasets import ImageFolder

    tree = ImageFolder(str(exported["imagefolder"]))
    assert len(tree) == 30
    # torchvision numbers classes by sorted folder name: that is the dataset's label order
    assert [tree.class_to_idx[c] for c in tree.classes] == list(range(10))
    assert [c.split("_", 1)[1] for c in tree.classes] == [
        n.replace("/", "_") for n in fashion.class_names
    ]
    labels = {row["file"]: int(row["label"]) for row in _labels_csv(exported["imagefolder"])}
    root = exported["imagefolder"]
    assert all(labels[str(Path(p).relative_to(root))] == t for p, t in tree.samples)


def test_npz_contents(exported, fashion, saved) -> None:
    with np.load(exported["npz"], allow_pickle=False) as archive:
        assert archive["images"].dtype == np.uint8 and archive["images"].shape == (30, 28, 28, 1)
        assert archive["labels"].dtype == np.int64
        assert archive["distill_mask"].dtype == np.bool_
        assert archive["distill_mask"].tolist() == saved[2].tolist()
        assert archive["class_names"].tolist() == list(fashion.class_names)
        assert json.loads(str(archive["manifest"]))["method"] == "test"
        assert archive["source_indices"].shape == (30,)
        assert archive["mean"].tolist() == pytest.approx(fashion.mean)


def test_refuses_to_overwrite_unless_asked(exported, capsys) -> None:
    for form, out in (("imagefolder", exported["imagefolder"]), ("npz", exported["npz"])):
        before = sorted(p.name for p in out.parent.iterdir())
        args = ["export", str(exported["set"]), "--out", str(out), "--format", form]
        assert main(args) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1, lines
        assert lines[0] == (
            f"selmatch: error: --out {out} holds an earlier export; pass --overwrite to replace it"
        )
        assert main([*args, "--overwrite"]) == 0
        assert sorted(p.name for p in out.parent.iterdir()) == before  # swapped in, no leftovers
    assert len(load_synthetic(exported["imagefolder"])) == 30


def test_overwrite_never_replaces_an_unrelated_folder(saved, tmp_path, capsys) -> None:
    precious = tmp_path / "work"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    for extra in ([], ["--overwrite"]):  # the message never suggests a flag that cannot help
        assert main(["export", str(saved[0]), "--out", str(precious), *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"--out {precious} is a folder that is not a selmatch" in err[0]
    assert (precious / "notes.txt").read_text() == "keep me"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["export", str(saved[0]), "--out", str(empty)]) == 0  # an empty folder is fine
    assert (empty / "labels.csv").is_file()


def test_bad_inputs_are_one_line_errors(saved, tmp_path, capsys) -> None:
    assert main(["export", str(tmp_path), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"SET_DIR {tmp_path} is not a saved set" in err[0]
    with pytest.raises(ExportError, match="is not a saved set folder"):
        load_synthetic(tmp_path)
    with pytest.raises(selmatch.ConfigError, match="--format must be one of imagefolder, npz"):
        export_set(saved[0], tmp_path / "x", "tiff")
    with pytest.raises(SystemExit) as exit_info:
        main(["export", "--help"])
    assert exit_info.value.code == 0
    assert "--overwrite" in capsys.readouterr().out


def test_rgb_sets_export_as_rgb(tmp_path) -> None:
    mean, std = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]
    pixels = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    m, s = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    SyntheticSet(
        (pixels.float() / 255 - m) / s,
        torch.tensor([0, 1, 2, 1]),
        torch.tensor([1, 0, 0, 1]),
        {"dataset": "toy", "mean": mean, "std": std, "num_classes": 3, "ipc": 1, "method": "test"},
    ).save(tmp_path / "set")
    export_set(tmp_path / "set", tmp_path / "tree", "imagefolder")
    assert sorted(p.name for p in (tmp_path / "tree").iterdir() if p.is_dir()) == ["0", "1", "2"]
    data = load_synthetic(tmp_path / "tree")
    with Image.open(tmp_path / "tree" / "1" / "1.png") as picture:
        assert picture.mode == "RGB"
    assert torch.equal((data.images * 255).round().to(torch.uint8), pixels)
    assert data.classes == ["0", "1", "2"] and data.distill_mask.tolist() == [1, 0, 0, 1]
    exported = export_set(tmp_path / "set", tmp_path / "toy", "npz")
    assert exported.path == tmp_path / "toy.npz" and exported.count == 4
    assert torch.equal(load_synthetic(exported.path).images, data.images)


def test_folder_names_are_safe_and_distinct() -> None:
    names = ["T-shirt/top", "a\\b", "", ".hidden", "Cat", "cat", "6", "", "", "", "x"]
    assert folder_names(names) == [
        "00_T-shirt_top",
        "01_a_b",
        "02",
        "03_.hidden",
        "04_Cat",
        "05_cat",
        "06_6",
        "07",
        "08",
        "09",
        "10_x",
    ]


def test_a_dataloader_trains_on_an_exported_set(exported) -> None:
    from torchvision.transforms import v2

    data = load_synthetic(exported["npz"])
    data.transform = v2.Compose(
        [v2.RandomCrop(28, padding=4), v2.RandomHorizontalFlip(), v2.Normalize(data.mean, data.std)]
    )
    loader = DataLoader(data, batch_size=8, shuffle=True)
    shape = (1, 28, 28)
    model = selmatch.build_model(selmatch.ModelConfig(width=8), shape, len(data.classes), seed=0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    images, labels = next(iter(loader))
    assert images.shape == (8, 1, 28, 28) and labels.dtype == torch.int64
    loss = torch.nn.functional.cross_entropy(model(images), labels)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
