"""The layout by stage: every import between the groups points one way (from a later stage
to an earlier one), and every module path from before the layout still imports, as the same
module (users' imports, and experiments Tune pickled with the old paths)."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

from selmatch._moved import MOVED

ROOT = Path(__file__).resolve().parents[1]
#: the groups of each package, earliest stage first: a module imports from its own group and
#: earlier ones only
ORDER = {
    ("selmatch", "selmatch"): (
        "core",
        "data",
        "difficulty",
        "training",
        "sets",
        "selection",
        "distillation",
        "evaluation",
        "cli",
    ),
    ("tune", "selmatch_tune"): ("settings", "results", "cluster", "flow"),
}


def _imports(path: Path) -> list[str]:
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            out.append(node.module)
        elif isinstance(node, ast.Import):
            out += [alias.name for alias in node.names]
    return out


def test_every_group_imports_only_its_own_and_earlier_stages() -> None:
    wrong = []
    for (folder, package), order in ORDER.items():
        groups = set(order)
        on_disk = {p.name for p in (ROOT / folder).iterdir() if (p / "__init__.py").is_file()}
        assert on_disk == groups, f"{folder}/ holds groups {sorted(on_disk)}; ORDER lists {order}"
        for path in (ROOT / folder).glob("*/*.py"):
            group = path.parent.name
            for module in _imports(path):
                parts = module.split(".")
                later = (
                    parts[1:2] and parts[1] in groups and order.index(parts[1]) > order.index(group)
                )
                if parts[0] == package and later:
                    wrong.append(f"{path.relative_to(ROOT)} imports {module}")
    assert not wrong, "imports against the stages' order:\n" + "\n".join(wrong)


def test_only_the_entry_points_stay_at_the_top() -> None:
    assert sorted(p.name for p in (ROOT / "selmatch").glob("*.py")) == [
        "__init__.py",
        "__main__.py",
        "_moved.py",
    ]
    assert sorted(p.name for p in (ROOT / "tune").glob("*.py")) == [
        "__init__.py",
        "reference.py",
        "search_alpha_beta.py",
    ]


@pytest.mark.parametrize("old", sorted(MOVED))
def test_an_old_module_path_is_the_module_at_its_new_one(old: str) -> None:
    assert importlib.import_module(old) is importlib.import_module(MOVED[old])


def test_old_paths_import_in_a_fresh_interpreter() -> None:
    """As a user's script or an unpickling Ray worker does: the first import names an old
    path (the package's __init__ installs the aliases on the way)."""
    code = (
        "from selmatch.distill import DistillConfig\n"
        "from selmatch.distillation.distill import DistillConfig as New\n"
        "import selmatch_tune.tracking as old\n"
        "from selmatch_tune.results import tracking\n"
        "assert DistillConfig is New and old is tracking\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
