import pytest
import torch

from selmatch.core.config import ConfigError
from selmatch.evaluation.evaluate import EvalConfig
from selmatch.training.models import ModelConfig, build_model
from selmatch.training.train import (
    TrainConfig,
    TrainingDivergedError,
    accuracy,
    check_device,
    epoch_batches,
    resolve_device,
    train_network,
)

CPU = torch.device("cpu")


def test_epoch_batches_cover_every_sample_once() -> None:
    batches = epoch_batches(10, 4, torch.Generator().manual_seed(0))
    assert [len(b) for b in batches] == [4, 4, 2]
    assert sorted(torch.cat(batches).tolist()) == list(range(10))


def test_a_trailing_batch_of_one_is_dropped_for_batchnorm() -> None:
    assert [len(b) for b in epoch_batches(9, 4, torch.Generator())] == [4, 4]
    assert [len(b) for b in epoch_batches(1, 4, torch.Generator())] == [1]


class Recorder:
    def __init__(self) -> None:
        self.seen: list[int] = []
        self.epochs: list[int] = []

    def on_batch(self, indices, logits, labels) -> None:
        assert logits.shape == (len(indices), 10) and not logits.requires_grad
        self.seen += indices.tolist()

    def on_epoch_end(self, epoch, model) -> None:
        self.epochs.append(epoch)


def test_hooks_see_every_sample_every_epoch(fashion) -> None:
    images, labels = fashion.train_images[:50], fashion.train_labels[:50]
    model = build_model(ModelConfig(width=4), fashion.image_shape, 10, seed=0)
    recorder = Recorder()
    config = TrainConfig(epochs=3, batch_size=16, augment="none")
    train_network(
        model,
        images,
        labels,
        config,
        seed=0,
        device=CPU,
        normalize=fashion.normalize,
        hooks=recorder,
    )
    assert recorder.epochs == [1, 2, 3]
    assert sorted(recorder.seen) == sorted(list(range(50)) * 3)


def test_divergence_is_an_error_not_a_silent_nan(fashion) -> None:
    images = fashion.normalize(fashion.train_images[:32]) * float("inf")
    model = build_model(ModelConfig(width=4), fashion.image_shape, 10, seed=0)
    with pytest.raises(TrainingDivergedError, match="diverged.*lower --lr"):
        train_network(
            model, images, fashion.train_labels[:32], TrainConfig(epochs=2), seed=0, device=CPU
        )


def test_uint8_images_need_a_normaliser(fashion) -> None:
    model = build_model(ModelConfig(width=4), fashion.image_shape, 10)
    with pytest.raises(ValueError, match="normalize"):
        train_network(
            model,
            fashion.train_images[:8],
            fashion.train_labels[:8],
            TrainConfig(epochs=1),
            seed=0,
            device=CPU,
        )


def test_accuracy_in_batches_matches_one_pass(fashion) -> None:
    model = build_model(ModelConfig(width=4), fashion.image_shape, 10, seed=1).eval()
    images, labels = fashion.test_images[:300], fashion.test_labels[:300]
    small = accuracy(model, images, labels, device=CPU, normalize=fashion.normalize, batch_size=7)
    with torch.no_grad():
        whole = (model(fashion.normalize(images)).argmax(1) == labels).float().mean().item()
    assert small == pytest.approx(whole)


@pytest.mark.parametrize("name", ["tpu:0", "CPU", "cpu:1", "cuda:x", "gpu", "", "mps:0"])
def test_an_unknown_device_is_one_line_naming_the_accepted_forms(name) -> None:
    with pytest.raises(ConfigError, match=r"^--device must be one of auto, cpu, cuda, cuda:N"):
        resolve_device(name)
    with pytest.raises(ConfigError, match=r"^short.device must be one of"):
        resolve_device(name, flag="short.device")  # the search names the setting's path
    with pytest.raises(ConfigError, match=r"^--device must be one of") as error:
        EvalConfig(device=name)  # the form is checked where the settings are made
    assert error.value.setting == "device"


def test_the_form_of_a_device_is_checked_without_the_device() -> None:
    for name in ("auto", "cpu", "cuda", "cuda:3"):  # this machine may lack CUDA: still a form
        assert check_device("device", name) == name


def test_a_device_this_machine_lacks_is_one_line(monkeypatch) -> None:
    assert resolve_device("cpu") == CPU
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == CPU
    for name in ("cuda", "cuda:1"):
        with pytest.raises(
            ConfigError, match=f"^--device {name} asked for, but torch sees no CUDA"
        ):
            resolve_device(name)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda:1") == torch.device("cuda:1")
    with pytest.raises(ConfigError, match=r"has 2 CUDA device\(s\): cuda:0 to cuda:1"):
        resolve_device("cuda:2")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="^--device mps asked for, but torch sees no MPS device"):
        resolve_device("mps")
