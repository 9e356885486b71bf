"""Bad input through the real command lines: every case fails with exit code 2 and one line on
stderr that names the argument or the file, prints no traceback and leaves the files as they
were.

The expected messages are the table of docs/troubleshooting.md ("Bad input: what each error
says"), so the documentation cannot drift from the code. After changing a message, write the
table afresh with ``.venv/bin/python tests/cli/test_bad_input.py --write``.

The cases of this file are the first group; each ``cases_*.py`` beside it adds a group (its
``CASES``: (command, names[, subprocess]) tuples, and ``build(root)``, which adds its inputs to
the folder the cases run in), in the order of the file names.

Most cases call the entry points in this process (a subprocess costs seconds of torch import);
a handful run as the user would, in a subprocess. No case may reach Ray: the search cases fail
at argument validation, and in this process ``ray.init`` and ``run_search`` are replaced by a
function that fails the test.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from selmatch import cli

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "troubleshooting.md"
SECTION = "## Bad input: what each error says"
SEARCH = "python tune/search_alpha_beta.py"


@dataclass(frozen=True)
class Case:
    command: str  # as typed in the folder of inputs (see build_inputs)
    names: str  # the argument or file the message must name
    subprocess: bool = False  # run it as a user would, in a fresh process

    @property
    def argv(self) -> list[str]:
        words = shlex.split(self.command)
        return words[2:] if self.command.startswith(SEARCH) else words[1:]


# Grouped by command; every selmatch subcommand and the search script appear.
# fmt: off
CASES = [
    Case("selmatch", "COMMAND"),
    Case("selmatch distil --ipc 5", "distil"),
    # evaluate
    Case("selmatch evaluate --ipc 0", "--ipc"),
    Case("selmatch evaluate --ipc 6000", "--ipc"),
    Case("selmatch evaluate --ipc five", "--ipc"),
    Case("selmatch evaluate --width 8", "--ipc --set"),
    Case("selmatch evaluate --ipc 5 --set good-set", "--set"),
    Case("selmatch evaluate --ipc 5 --epochs -3", "--epochs"),
    Case("selmatch evaluate --ipc 5 --epochs full:0", "--epochs"),
    Case("selmatch evaluate --ipc 5 --val-fraction 0.9", "--val-fraction"),
    Case("selmatch evaluate --ipc 5 --dataset cifar10", "--data-root"),
    Case("selmatch evaluate --ipc 5 --dataset mnist", "--dataset"),
    Case("selmatch evaluate --ipc 5 --width 0", "--width"),
    Case("selmatch evaluate --ipc 5 --model resnet50", "--model"),
    Case("selmatch evaluate --ipc 5 --dsa-strategy blur", "--dsa-strategy"),
    Case("selmatch evaluate --ipc 5 --out empty-folder", "--out empty-folder"),
    Case("selmatch evaluate --ipc 5 --out a-file/result.json", "--out a-file/result.json"),
    Case("selmatch evaluate --set missing-set", "--set missing-set"),
    Case("selmatch evaluate --set set-not-json", "set-not-json/manifest.json"),
    Case("selmatch evaluate --set set-not-a-manifest", "set-not-a-manifest/manifest.json"),
    Case("selmatch evaluate --set set-without-keys", "set-without-keys/manifest.json"),
    Case("selmatch evaluate --set set-bad-mean", "set-bad-mean/manifest.json"),
    Case("selmatch evaluate --set set-truncated", "set-truncated/set.safetensors", True),
    Case("selmatch evaluate --set set-without-images", "set-without-images/set.safetensors"),
    Case("selmatch evaluate --set good-set --dataset cifar10", "--dataset"),
    Case("selmatch evaluate --ipc 1 --dataset imagefolder:truncated-png",
         "truncated-png/train/b/1.png", True),
    Case("selmatch evaluate --ipc 1 --dataset imagefolder:not-a-png", "not-a-png/test/a/0.png"),
    Case("selmatch evaluate --ipc 1 --dataset imagefolder:empty-folder", "empty-folder"),
    Case("selmatch evaluate --ipc 5 --eval-order fast", "--eval-order"),
    Case("selmatch evaluate --ipc 5 --eval-order sequential", "--eval-order"),
    Case("selmatch evaluate --set good-set --eval-order sequential", "--eval-order"),
    # experts
    Case("selmatch experts --out a-file", "--out a-file", True),
    Case("selmatch experts --epochs 0", "--epochs"),
    Case("selmatch experts --epochs 2 --el2n-epoch 3", "--el2n-epoch"),
    Case("selmatch experts --augment blur", "--augment"),
    Case("selmatch experts --dataset imagefolder:truncated-png", "truncated-png/train/b/1.png"),
    # scores
    Case("selmatch scores --scores empty-folder", "--scores empty-folder"),
    Case("selmatch scores --scores scores-not-json", "scores-not-json/scores.json"),
    Case("selmatch scores --scores scores-without-directions",
         "scores-without-directions/scores.json"),
    Case("selmatch scores --scores scores-truncated", "scores-truncated/scores.safetensors"),
    Case("selmatch scores --import scores.csv", "--import scores.csv"),
    Case("selmatch scores --import truncated.npy", "--import truncated.npy"),
    Case("selmatch scores --import empty.npy", "--import empty.npy"),
    Case("selmatch scores --import truncated.npy --estimate consistency", "--import"),
    Case("selmatch scores --estimate cscore", "--estimate"),
    Case("selmatch scores --estimate consistency --dataset imagefolder:not-a-png",
         "not-a-png/test/a/0.png"),
    # window
    Case("selmatch window --beta 0.5", "--ipc"),
    Case("selmatch window --ipc 5 --out a-file", "--out a-file"),
    Case("selmatch window --ipc 5 --scores empty-folder", "--scores empty-folder"),
    Case("selmatch window --ipc 5 --scores scores-not-json", "scores-not-json/scores.json"),
    Case("selmatch window --ipc 5 --dataset imagefolder:truncated-png",
         "truncated-png/train/b/1.png"),
    # window-sweep
    Case("selmatch window-sweep --ipc 5 --out a-file", "--out a-file"),
    Case("selmatch window-sweep --ipc 5 --scores scores-truncated",
         "scores-truncated/scores.safetensors"),
    Case("selmatch window-sweep --ipc 5 --dataset imagefolder:not-a-png",
         "not-a-png/test/a/0.png"),
    # distill
    Case("selmatch distill --ipc 5 --trajectories-per-step 0", "--trajectories-per-step"),
    Case("selmatch distill --ipc 5 --precision fp16", "--precision"),
    Case("selmatch distill --ipc 5 --cuda-graphs --device cpu", "--cuda-graphs"),
    Case("selmatch distill --ipc 5 --channels-last --trajectories-per-step 2", "--channels-last"),
    Case("selmatch distill --ipc 5 --out a-file", "--out a-file"),
    Case("selmatch distill --ipc 5 --alpha 2", "--alpha"),
    Case("selmatch distill --ipc 5 --student-steps 0", "--student-steps"),
    Case("selmatch distill --ipc 5 --memory fast", "--memory"),
    Case("selmatch distill --ipc 5 --method dc", "--method"),
    Case("selmatch distill --ipc 5 --method seqmatch --seqmatch-experts all", "--seqmatch-experts"),
    Case("selmatch distill --ipc 5 --seqmatch-experts retrained", "--seqmatch-experts"),
    Case("selmatch distill --ipc 5 --method seqmatch --seqmatch-experts retrained "
         "--stage-experts 0", "--stage-experts"),
    Case("selmatch distill --ipc 5 --experts empty-folder", "--experts empty-folder"),
    Case("selmatch distill --ipc 5 --experts experts-not-json", "experts-not-json/manifest.json"),
    Case("selmatch distill --ipc 5 --experts experts-without-config",
         "experts-without-config/manifest.json"),
    Case("selmatch distill --ipc 5 --dataset imagefolder:truncated-png",
         "truncated-png/train/b/1.png"),
    # coverage
    Case("selmatch coverage --sample 100", "--set"),
    Case("selmatch coverage --set set-not-json", "set-not-json/manifest.json"),
    Case("selmatch coverage --set set-truncated", "set-truncated/set.safetensors"),
    Case("selmatch coverage --set good-set --out empty-folder", "--out empty-folder"),
    # export
    Case("selmatch export good-set", "--out"),
    Case("selmatch export missing-set --out exported", "missing-set"),
    Case("selmatch export set-without-keys --out exported", "set-without-keys/manifest.json"),
    Case("selmatch export set-truncated --out exported", "set-truncated/set.safetensors"),
    Case("selmatch export good-set --out a-file", "--out a-file"),
    Case("selmatch export good-set --out a-file/exported", "--out a-file/exported"),
    Case("selmatch export good-set --out exported --format tiff", "--format"),
    # the search script: all fail before Ray starts
    Case(f"{SEARCH} --out a-file", "--out a-file", True),
    Case(f"{SEARCH} --out a-file/search", "--out a-file/search"),
    Case(f"{SEARCH} --preset huge", "--preset"),
    Case(f"{SEARCH} --ipcs 10,x", "--ipcs"),
    Case(f"{SEARCH} --ipcs 10,5", "--ipcs"),
    Case(f"{SEARCH} --alpha-grid 0,2", "--alpha-grid"),
    Case(f"{SEARCH} --method mtt", "--method"),
    Case(f"{SEARCH} --subsets-grid 1,2", "--subsets-grid"),
    Case(f"{SEARCH} --stage-parallel -1", "--stage-parallel -1"),
    Case(f"{SEARCH} --override stage_parallel=-1", "--override stage_parallel=-1"),
    Case(f"{SEARCH} --override distill.lr_images", "--override"),
    Case(f"{SEARCH} --override distill.lr_image=100", "--override distill.lr_image"),
    Case(f"{SEARCH} --override distill.mode=fast", "--override distill.mode=fast"),
    Case(f"{SEARCH} --override experts.dataset=cifar10", "--override experts.dataset=cifar10"),
    Case(f"{SEARCH} --max-start-epoch-grid 1,999", "--max-start-epoch-grid"),
    Case(f"{SEARCH} --finalists -1", "--finalists"),
    Case(f"{SEARCH} --target-epochs 0", "--target-epochs"),
    Case(f"{SEARCH} --student-steps 0", "--student-steps 0"),
    Case(f"{SEARCH} --expert-train-epochs 0", "--expert-train-epochs 0"),
    # flags that meant another thing here than in selmatch's commands: moved, and said so
    Case(f"{SEARCH} --set distill.lr_images=100", "--set"),
    Case(f"{SEARCH} --experts 4", "--experts"),
]
# fmt: on


def _groups() -> list:
    """The modules ``cases_*.py`` beside this file, in name order."""
    found = []
    for path in sorted(Path(__file__).resolve().parent.glob("cases_*.py")):
        spec = importlib.util.spec_from_file_location(f"bad_input_{path.stem}", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        found.append(module)
    return found


GROUPS = _groups()
CASES += [Case(*case) for group in GROUPS for case in group.CASES]


# --------------------------------------------------------------------------- the inputs
def _png(path: Path, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(value).integers(0, 255, (12, 12), dtype=np.uint8)
    Image.fromarray(pixels, "L").save(path)


def _image_folder(root: Path) -> None:
    for split, count in (("train", 3), ("test", 2)):
        for name in ("a", "b"):
            for i in range(count):
                _png(root / split / name / f"{i}.png", value=i)


def _set(folder: Path, manifest: str | None = None, **tensors: torch.Tensor) -> None:
    folder.mkdir(parents=True)
    tensors = tensors or {
        "images": torch.zeros(4, 1, 28, 28),
        "labels": torch.tensor([0, 0, 1, 1]),
        "distill_mask": torch.tensor([1, 0, 1, 0], dtype=torch.uint8),
    }
    save_file(tensors, str(folder / "set.safetensors"))
    (folder / "manifest.json").write_text(
        manifest
        or '{"kind": "selmatch-set", "format_version": 1, "dataset": "fashion-mnist", '
        '"mean": [0.286], "std": [0.353], "num_classes": 10, "ipc": 2, "method": "test"}'
    )


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def build_inputs(root: Path) -> None:
    """The folder the cases run in: each bad input once, named for what is wrong with it."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "a-file").write_text("an existing file, not a folder\n")
    (root / "empty-folder").mkdir()
    _image_folder(root / "truncated-png")
    _truncate(root / "truncated-png" / "train" / "b" / "1.png")
    _image_folder(root / "not-a-png")
    (root / "not-a-png" / "test" / "a" / "0.png").write_text("not an image\n")
    _set(root / "good-set")
    _set(root / "set-not-json", '{"kind": "selmatch-set", "dataset": ')
    _set(root / "set-not-a-manifest", "[1, 2, 3]")
    _set(root / "set-without-keys", '{"kind": "selmatch-set", "format_version": 1}')
    _set(
        root / "set-bad-mean",
        '{"kind": "selmatch-set", "dataset": "fashion-mnist", "mean": "0.286", "std": [0.353], '
        '"num_classes": 10, "ipc": 2, "method": "test"}',
    )
    _set(root / "set-truncated")
    _truncate(root / "set-truncated" / "set.safetensors")
    _set(root / "set-without-images", labels=torch.tensor([0, 1]))
    scores = {"forgetting": torch.zeros(60000, dtype=torch.float64)}
    for name in ("scores-not-json", "scores-without-directions", "scores-truncated"):
        (root / name).mkdir()
        save_file(scores, str(root / name / "scores.safetensors"))
        (root / name / "scores.json").write_text(
            '{"directions_higher_is_harder": {"forgetting": true}, "dataset": "fashion-mnist"}'
        )
    (root / "scores-not-json" / "scores.json").write_text("{'forgetting': true}")
    (root / "scores-without-directions" / "scores.json").write_text('{"dataset": "x"}')
    _truncate(root / "scores-truncated" / "scores.safetensors")
    (root / "scores.csv").write_text("0.5\n")
    np.save(root / "truncated.npy", np.zeros(60000))
    _truncate(root / "truncated.npy")
    (root / "empty.npy").write_bytes(b"")
    experts = {"experts-not-json": "{", "experts-without-config": '{"kind": "selmatch-experts"}'}
    for name, text in experts.items():
        (root / name).mkdir()
        (root / name / "manifest.json").write_text(text)
    for group in GROUPS:
        group.build(root)


# --------------------------------------------------------------------------- running a case
@contextlib.contextmanager
def _inside(folder: Path, home: Path) -> Iterator[None]:
    """cwd = the inputs (so default outputs would land there and be seen), a private HOME (the
    image cache) and no $SELMATCH_DATA_ROOT."""
    saved_cwd, saved_env = os.getcwd(), dict(os.environ)
    os.chdir(folder)
    os.environ["HOME"] = str(home)
    os.environ.pop("SELMATCH_DATA_ROOT", None)
    try:
        yield
    finally:
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)


def _no_ray(*args: object, **kwargs: object) -> None:
    raise AssertionError("a bad-input case reached Ray")


def _run_in_process(case: Case) -> tuple[int, str, str]:
    """The entry point's main() here; an exception it lets through fails the test as it is."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.ExitStack() as stack:
        if case.command.startswith(SEARCH):
            from selmatch_tune.search_alpha_beta import main

            stack.enter_context(mock.patch("ray.init", _no_ray))
            stack.enter_context(mock.patch("selmatch_tune.flow.search.run_search", _no_ray))
        else:
            main = cli.main
        stack.enter_context(contextlib.redirect_stdout(out))
        stack.enter_context(contextlib.redirect_stderr(err))
        try:
            code = main(case.argv)
        except SystemExit as exit:  # argparse
            code = exit.code if isinstance(exit.code, int) else 1
    return code, out.getvalue(), err.getvalue()


def _run_subprocess(case: Case) -> tuple[int, str, str]:
    if case.command.startswith(SEARCH):
        program = [sys.executable, str(ROOT / "tune" / "search_alpha_beta.py")]
    else:
        program = [sys.executable, "-m", "selmatch"]
    done = subprocess.run(
        [*program, *case.argv], capture_output=True, text=True, timeout=300, check=False
    )
    return done.returncode, done.stdout, done.stderr


def run_case(case: Case, folder: Path, home: Path) -> tuple[int, str, str]:
    with _inside(folder, home):
        code, out, err = (_run_subprocess if case.subprocess else _run_in_process)(case)
    for path, name in ((folder, "TMP"), (home, "HOME")):  # should a path come out absolute
        out, err = out.replace(str(path), name), err.replace(str(path), name)
    return code, out, err


def snapshot(folder: Path) -> dict[str, tuple[bool, int, int]]:
    """Every path below ``folder`` with whether it is a folder, its size and mtime."""
    found = {}
    for path in sorted(folder.rglob("*")):
        stat = path.lstat()
        found[str(path.relative_to(folder))] = (path.is_dir(), stat.st_size, stat.st_mtime_ns)
    return found


# --------------------------------------------------------------------------- the doc table
def _cell(text: str) -> str:
    return "`` " + text.replace("|", "\\|") + " ``"  # spaced: a message may end in a backtick


def render_table(results: dict[str, tuple[int, str]]) -> str:
    rows = [f"| {_cell(c)} | {code} | {_cell(line)} |" for c, (code, line) in results.items()]
    return "\n".join(["| input | exit code | message |", "|---|---|---|", *rows])


def documented() -> dict[str, tuple[int, str]]:
    """The table of the doc's section: input -> (exit code, message)."""
    text = DOC.read_text()
    assert SECTION in text, f"{DOC} lacks the section {SECTION!r}"
    section = text.split(SECTION, 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `` (.+?) `` \| (\d+) \| `` (.*) `` \|$", section, flags=re.MULTILINE)
    return {_uncell(c): (int(code), _uncell(line)) for c, code, line in rows}


def _uncell(text: str) -> str:
    return text.replace("\\|", "|")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("bad-input") / "inputs"
    build_inputs(folder)
    return folder, tmp_path_factory.mktemp("home")


@pytest.fixture(scope="module")
def table() -> dict[str, tuple[int, str]]:
    return documented()


def test_the_cases_are_many_and_cover_every_command() -> None:
    assert len(CASES) >= 40
    assert len({c.command for c in CASES}) == len(CASES)
    parser = cli.build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    commands = {c.argv[0] for c in CASES if c.argv and not c.command.startswith(SEARCH)}
    assert set(subparsers.choices) <= commands, set(subparsers.choices) - commands
    assert any(c.command.startswith(SEARCH) for c in CASES)


def test_the_doc_table_lists_every_case_in_order(table) -> None:
    assert list(table) == [c.command for c in CASES], (
        f"the table in {DOC.name} differs from CASES: print it afresh with "
        ".venv/bin/python tests/cli/test_bad_input.py"
    )


@pytest.mark.parametrize("case", CASES, ids=[c.command for c in CASES])
def test_bad_input_is_one_line_naming_the_argument_or_file(case, inputs, table) -> None:
    folder, home = inputs
    before = snapshot(folder)
    code, out, err = run_case(case, folder, home)
    assert "Traceback" not in out + err, out + err
    assert snapshot(folder) == before, "a failed command changed the files"
    lines = err.splitlines()
    assert code != 0 and len(lines) == 1, f"exit code {code}, stderr:\n{err}"
    assert case.names in lines[0]
    assert (code, lines[0]) == table.get(case.command), f"{DOC.name} says otherwise"


def test_skip_bad_images_leaves_them_out_and_says_so_in_one_line(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    _image_folder(tmp_path / "data")
    _truncate(tmp_path / "data" / "train" / "b" / "1.png")
    command = (
        "selmatch evaluate --dataset imagefolder:data --skip-bad-images --ipc 1 --width 4 "
        "--epochs 1 --seeds 1 --no-progress --out r.json"
    )
    code, out, err = _run_in_process(Case(command, ""))
    assert code == 0, err
    assert err == (
        "selmatch: warning: --skip-bad-images left out 1 image file(s) that cannot be read; the "
        "first: data/train/b/1.png: image file is truncated\n"
    )
    assert "imagefolder:data: 5 train / 4 test" in out
    assert (tmp_path / "r.json").is_file()


def write_table(table: str) -> None:
    """Replace the doc section's table with ``table``."""
    text = DOC.read_text()
    head, section = text.split(SECTION, 1)
    body, *rest = section.split("\n## ", 1)
    start, end = body.index("| input | exit code | message |"), body.rindex(" |\n") + 3
    section = body[:start] + table + "\n" + body[end:]
    DOC.write_text(head + SECTION + section + "".join("\n## " + r for r in rest))


if __name__ == "__main__":  # print (or --write into the doc) the table from the code as it is
    import tempfile

    with tempfile.TemporaryDirectory() as scratch:
        folder, home = Path(scratch) / "inputs", Path(scratch) / "home"
        build_inputs(folder)
        results = {}
        for case in CASES:
            code, _, err = run_case(case, folder, home)
            results[case.command] = (code, " / ".join(err.strip().splitlines()))
        if "--write" in sys.argv[1:]:
            write_table(render_table(results))
            print(f"{len(results)} rows written to {DOC}")
        else:
            print(render_table(results))
