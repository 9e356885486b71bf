import dataclasses

import pytest

from selmatch.core.config import ConfigError, check_choice, check_float, check_int
from selmatch.evaluation.evaluate import EvalConfig
from selmatch.training.models import ModelConfig
from selmatch.training.train import TrainConfig


def test_round_trip_of_nested_config() -> None:
    config = EvalConfig(model=ModelConfig(width=16), train=TrainConfig(epochs=7), num_seeds=2)
    assert EvalConfig.from_dict(config.to_dict()) == config


def test_unknown_key_is_rejected_with_the_known_ones_listed() -> None:
    data = ModelConfig().to_dict() | {"widht": 3}
    with pytest.raises(ConfigError, match="unknown setting.*widht.*known: depth, name, norm"):
        ModelConfig.from_dict(data)


def test_configs_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        ModelConfig().width = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: check_int("ipc", 0, 1, 50), r"--ipc must be an integer in \[1, 50\], got 0"),
        (lambda: check_int("ipc", 2.5, 1), r"--ipc must be an integer in \[1, ∞\], got 2.5"),
        (lambda: check_int("ipc", True, 1), r"--ipc must be an integer"),
        (
            lambda: check_float("alpha", 0.0, 0.0, 1.0, low_open=True),
            r"--alpha must be a number in \(0, 1\], got 0",
        ),
        (lambda: check_float("lr", float("nan"), 0.0), r"--lr must be a number in \[0, ∞\)"),
        (lambda: check_choice("norm", "layer", ("batch", "none")), r"--norm must be one of batch"),
        (lambda: TrainConfig(epochs=0), r"--epochs must be an integer in \[1, "),
        (lambda: TrainConfig(momentum=1.0), r"--momentum must be a number in \[0, 1\)"),
        (lambda: ModelConfig(name="resnet50"), r"--model must be one of convnet, resnet18, vgg11"),
    ],
)
def test_bad_values_give_one_line_errors_naming_the_argument(call, message) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        call()
    assert "\n" not in str(info.value)


def test_a_resumable_folder_names_the_nested_settings_that_changed() -> None:
    from selmatch.core.config import changed_settings, check_resumable
    from selmatch.selection.consistency import ConsistencyConfig

    before = ConsistencyConfig()
    after = before.replace(
        num_networks=before.num_networks + 2,
        epochs=before.epochs + 1,
        model=before.model.replace(width=before.model.width * 2),
    )
    assert changed_settings(before, after) == ["epochs", "model.width", "num_networks"]
    assert changed_settings(before, after, may_change=("num_networks",)) == [
        "epochs",
        "model.width",
    ]
    check_resumable(
        before, before.replace(num_networks=9), "{changed}", may_change=["num_networks"]
    )
    with pytest.raises(ConfigError, match=r"^made with epochs, model.width; use the same$"):
        check_resumable(
            before, after, "made with {changed}; use the same", may_change=("num_networks",)
        )


def test_every_setting_of_the_stage_configs_is_declared_with_its_help() -> None:
    from selmatch.core.config import flag, setting_of
    from selmatch.distillation.distill import DistillConfig
    from selmatch.distillation.target import SetSpec
    from selmatch.evaluation.sweep import SweepConfig
    from selmatch.selection.consistency import ConsistencyConfig
    from selmatch.training.augment import DSAConfig
    from selmatch.training.experts import ExpertConfig

    for cls in (
        ModelConfig,
        TrainConfig,
        DSAConfig,
        EvalConfig,
        ExpertConfig,
        ConsistencyConfig,
        SweepConfig,
        DistillConfig,
        SetSpec,
    ):
        for field in dataclasses.fields(cls):
            declared = setting_of(field)
            assert declared is not None and declared.help, f"{cls.__name__}.{field.name}"
            assert "%" not in declared.help + declared.paper, "argparse formats help with %"
    # the error messages call a setting by its option, also where it is not the field's name
    assert (flag("name"), flag("num_seeds"), flag("num_networks")) == (
        "--model",
        "--seeds",
        "--networks",
    )
    assert flag("num_experts") == "--num-experts"
