import torch

from selmatch.data import ImageDataset, load_dataset


def test_real_fashion_mnist_loads(fashion: ImageDataset) -> None:
    assert len(fashion.train_labels) == 60_000
    assert len(fashion.test_labels) == 10_000
    assert fashion.num_classes == 10
    assert fashion.image_shape == (1, 28, 28)
    assert fashion.train_images.dtype == torch.uint8
    assert torch.bincount(fashion.train_labels).tolist() == [6000] * 10
    assert torch.bincount(fashion.test_labels).tolist() == [1000] * 10
    assert fashion.class_names[9] == "Ankle boot"


def test_normalisation_uses_the_training_statistics(fashion: ImageDataset) -> None:
    normalised = fashion.normalize(fashion.train_images[:20_000])
    assert abs(float(normalised.mean())) < 0.02
    assert abs(float(normalised.std()) - 1.0) < 0.02
    restored = fashion.denormalize(normalised[:5])
    assert torch.allclose(restored * 255, fashion.train_images[:5].float(), atol=1e-3)


def test_data_root_with_the_idx_files_is_used(tmp_path, fashion: ImageDataset) -> None:
    source = __import__("pathlib").Path(fashion.source)
    for file in source.glob("*.gz"):
        (tmp_path / file.name).symlink_to(file)
    again = load_dataset("fashion-mnist", data_root=tmp_path)
    assert again.source == str(tmp_path)
    assert torch.equal(again.test_images, fashion.test_images)


def test_image_size_resizes_registered_datasets_too(fashion: ImageDataset) -> None:
    from dataclasses import replace

    from selmatch.data.dataset import resized

    part = replace(
        fashion,
        train_images=fashion.train_images[:50],
        train_labels=fashion.train_labels[:50],
        test_images=fashion.test_images[:10],
        test_labels=fashion.test_labels[:10],
    )
    small = resized(part, 32)
    assert small.image_shape == (1, 32, 32) and small.train_images.dtype == torch.uint8
    # a smooth upscale keeps the picture: the mean brightness barely moves
    before, after = fashion.train_images[:50].float().mean(), small.train_images.float().mean()
    assert abs(float(before - after)) < 2.0
    assert load_dataset("fashion-mnist", image_size=28).image_shape == (1, 28, 28)
