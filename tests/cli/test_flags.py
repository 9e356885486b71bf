"""One flag, one meaning: an option spelled the same in two commands (the ``selmatch``
subcommands and the search) sets the same setting, takes the same kind of value, and, where
it is made from a config field's declaration, says the same in ``--help``."""

from __future__ import annotations

import argparse
from collections import defaultdict

from selmatch.cli import build_parser
from selmatch.cli.options import _Moved
from selmatch_tune.search_alpha_beta import build_parser as search_parser


def commands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {
        **{f"selmatch {name}": p for name, p in sub.choices.items()},
        "search_alpha_beta.py": search_parser(),
    }


def kind(action: argparse.Action) -> str:
    if action.nargs == 0:
        return "switch"
    return getattr(action.type, "__name__", "str") if action.type is not None else "str"


def meanings() -> dict[str, dict[tuple[str, str], list[str]]]:
    """flag -> (the setting it sets, its kind of value) -> the commands that have it so."""
    seen: dict[str, dict[tuple[str, str], list[str]]] = defaultdict(lambda: defaultdict(list))
    for command, parser in commands().items():
        for action in parser._actions:
            if isinstance(action, (_Moved, argparse._HelpAction)):
                continue
            setting = action.dest.rsplit(".", 1)[-1]  # the search reaches experts.model.width
            for option in action.option_strings:
                if option.startswith("--"):
                    seen[option][(setting, kind(action))].append(command)
    return seen


#: the same setting with a wider value in some commands (said in their --help)
WIDER = {
    "--epochs": "evaluations also take paper (the paper's rule) and full:F (a budget)",
    "--method": "the search may distil with both methods (methods, --method both)",
}


def test_every_flag_means_one_thing_in_every_command() -> None:
    two = {
        flag: {f"{s} ({k})": cmds for (s, k), cmds in uses.items()}
        for flag, uses in meanings().items()
        if len(uses) > 1
    }
    for flag in WIDER:  # one setting, values of two kinds
        settings = {s.rstrip("s") for s, _ in meanings()[flag]}
        assert len(settings) == 1, f"{flag} sets {settings}"
        two.pop(flag, None)
    assert not two, f"flags with two meanings: {two}"


def test_the_flags_that_changed_meaning_are_gone_and_say_where_they_went() -> None:
    seen = meanings()
    # --experts is an expert folder wherever it is an option; the count is --num-experts
    assert set(seen["--experts"]) == {("experts", "Path")}
    assert {k for (_, k) in seen["--num-experts"]} == {"int"}
    assert len(seen["--num-experts"]) == 1 and len(next(iter(seen["--num-experts"].values()))) == 2
    # --expert-epochs is M in the search as in selmatch distill
    assert set(seen["--expert-epochs"]) == {("expert_epochs", "int")}
    assert sorted(next(iter(seen["--expert-epochs"].values()))) == [
        "search_alpha_beta.py",
        "selmatch distill",
    ]
    # --set is a synthetic-set folder; the search's paths are --override
    assert set(seen["--set"]) == {("set", "Path")}
    assert "search_alpha_beta.py" in next(iter(seen["--override"].values()))


def test_a_declared_setting_reads_the_same_in_every_command() -> None:
    """The matching options of the search and of selmatch distill are one declaration: the
    search's help is the distill help with the preset's default."""
    helps: dict[str, dict[str, str]] = defaultdict(dict)
    for command, parser in commands().items():
        for action in parser._actions:
            for option in action.option_strings:
                helps[option][command] = action.help or ""
    for option in (
        "--student-steps",
        "--expert-epochs",
        "--max-start-epoch",
        "--syn-batch",
        "--iterations",
        "--lr-images",
    ):
        distill = helps[option]["selmatch distill"].split(" (default:")[0]
        search = helps[option]["search_alpha_beta.py"]
        assert search.startswith(distill) and search.endswith("(default: the preset's)"), option
