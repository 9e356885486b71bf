"""The ``selmatch`` command as a user types it."""

import json
import subprocess
import sys

import torch

from selmatch.cli import build_parser, main
from selmatch.sets.synthetic import SyntheticSet


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "selmatch", *args], capture_output=True, text=True, check=False
    )


def test_top_level_help_lists_every_subcommand_with_a_line() -> None:
    out = run_cli("--help")
    assert out.returncode == 0
    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    for name, choice in subparsers.choices.items():
        assert name in out.stdout
        assert choice.description


def test_every_option_of_every_subcommand_has_help() -> None:
    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    for name, sub in subparsers.choices.items():
        for action in sub._actions:
            assert action.help, f"selmatch {name} {action.option_strings} has no help"


def test_evaluate_random_subset_writes_a_result(tmp_path, capsys) -> None:
    out_file = tmp_path / "r.json"
    args = ["evaluate", "--ipc", "3", "--width", "8", "--epochs", "5", "--seeds", "1"]
    assert main([*args, "--no-progress", "--out", str(out_file)]) == 0
    printed = capsys.readouterr().out
    assert "random-ipc3-s0: test" in printed and str(out_file) in printed
    payload = json.loads(out_file.read_text())
    assert payload["result"]["set_size"] == 30
    assert payload["config"]["model"]["width"] == 8
    assert payload["config"]["train"]["augment"] == "dsa"


def test_evaluate_with_a_full_data_epoch_budget(tmp_path) -> None:
    out_file = tmp_path / "r.json"
    args = ["evaluate", "--ipc", "3", "--width", "8", "--epochs", "full:0.003", "--seeds", "1"]
    assert main([*args, "--no-progress", "--out", str(out_file)]) == 0
    payload = json.loads(out_file.read_text())
    # 0.003 epochs over the 58,800-image pool = 176.4 images = 6 epochs over 30 images
    assert payload["result"]["epochs"] == 6 == payload["config"]["train"]["epochs"]


def test_evaluate_saved_set_uses_combined_augmentation(tmp_path, fashion, capsys) -> None:
    images = fashion.normalize(fashion.train_images[:20])
    SyntheticSet(
        images,
        fashion.train_labels[:20],
        torch.arange(20) < 10,
        {
            "dataset": "fashion-mnist",
            "mean": list(fashion.mean),
            "std": list(fashion.std),
            "num_classes": 10,
            "ipc": 2,
            "method": "test",
        },
    ).save(tmp_path / "set")
    out_file = tmp_path / "r.json"
    args = ["evaluate", "--set", str(tmp_path / "set"), "--width", "8", "--epochs", "2"]
    assert main([*args, "--seeds", "1", "--no-progress", "--out", str(out_file)]) == 0
    assert "10 distilled" in capsys.readouterr().out
    assert json.loads(out_file.read_text())["config"]["train"]["augment"] == "combined"


def test_the_commands_defaults_are_their_configs() -> None:
    """The options made from a config's fields build that config's defaults (the network's
    width too, which differs between the commands)."""
    from selmatch.cli import experts, scores
    from selmatch.cli.options import values
    from selmatch.selection.consistency import ConsistencyConfig
    from selmatch.training.experts import ExpertConfig

    parser = build_parser()
    args = parser.parse_args(["experts"])
    assert ExpertConfig(**values(args, experts.EXPERT_OPTIONS)) == ExpertConfig()
    assert args.width == ExpertConfig().model.width
    args = parser.parse_args(["scores"])
    assert ConsistencyConfig(**values(args, scores.CONSISTENCY_OPTIONS)) == ConsistencyConfig()
    assert args.width == ConsistencyConfig().model.width


def test_the_number_of_experts_is_num_experts_and_experts_says_so() -> None:
    out = run_cli("experts", "--experts", "4")
    assert out.returncode == 2
    assert out.stderr.strip() == (
        "selmatch: error: --experts is an expert folder in every other command; the number of "
        "experts is --num-experts N (see selmatch experts --help)"
    )
    assert build_parser().parse_args(["experts", "--num-experts", "4"]).num_experts == 4
