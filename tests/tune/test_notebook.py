"""notebooks/compare_runs.ipynb: run top to bottom on a real smoke search (real Ray, MLflow
and distilled sets) in a real Jupyter kernel, and committed without outputs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import nbformat
import pytest
from nbclient import NotebookClient

from selmatch_tune.settings.presets import smoke

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "compare_runs.ipynb"
MARKER = "PROBE "
# Appended to the executed copy only: what the notebook's trials table holds, per IPC and phase.
PROBE = f"""
import json
counts = trials.groupby(["ipc", "phase"], observed=True).size()
print({MARKER!r} + json.dumps({{
    "rows": len(trials), "groups": {{f"{{p}}-{{i}}": int(n) for (i, p), n in counts.items()}},
}}))
"""


@pytest.fixture(scope="module")
def smoke_run(smoke_search: tuple[Path, Any]) -> Path:
    """The session's smoke search (tests/tune/conftest.py); the notebook needs no Ray."""
    return smoke_search[0]


@pytest.fixture(scope="module")
def executed(smoke_run: Path) -> nbformat.NotebookNode:
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    notebook.cells.append(nbformat.v4.new_code_cell(PROBE.strip()))
    with pytest.MonkeyPatch.context() as patch:  # the kernel inherits this environment
        patch.setenv("SELMATCH_RUN", str(smoke_run))
        patch.delenv("SELMATCH_TRACKING_URI", raising=False)
        client = NotebookClient(
            notebook,
            kernel_name="python3",
            timeout=600,
            resources={"metadata": {"path": str(NOTEBOOK.parent)}},
        )
        client.execute()  # raises CellExecutionError, with the cell and its traceback
    return notebook


def tagged(notebook: nbformat.NotebookNode, tag: str) -> nbformat.NotebookNode:
    (cell,) = [c for c in notebook.cells if tag in c.metadata.get("tags", [])]
    return cell


def images(cell: nbformat.NotebookNode) -> int:
    return sum("image/png" in output.get("data", {}) for output in cell.outputs)


def probe(notebook: nbformat.NotebookNode) -> dict[str, Any]:
    text = "".join(o.get("text", "") for o in notebook.cells[-1].outputs)
    (line,) = [line for line in text.splitlines() if line.startswith(MARKER)]
    return json.loads(line[len(MARKER) :])


def test_the_notebook_runs_on_a_smoke_search(
    executed: nbformat.NotebookNode, smoke_run: Path
) -> None:
    errors = [
        o
        for c in executed.cells
        if c.cell_type == "code"
        for o in c.outputs
        if o.output_type == "error"
    ]
    assert errors == []
    state = json.loads((smoke_run / "search_state.json").read_text())
    ipcs = sorted(int(ipc) for ipc in state["ipcs"])
    assert ipcs == list(smoke().ipcs)
    # (a) one row per trial of the search, as search_state.json counts them: the grid's and
    # the baselines' (the random subset in the β phase, plain MTT in the α phase)
    entries = {ipc: state["ipcs"][str(ipc)] for ipc in ipcs}
    expected = {
        f"{p}-{ipc}": e[p]["trials"] + e[p].get(b, {}).get("n", 0)
        for ipc, e in entries.items()
        for p, b in (("beta", "random"), ("alpha", "mtt"))
    }
    assert probe(executed) == {"rows": sum(expected.values()), "groups": expected}
    # (b) the curves, (d) one grid per winner
    assert images(tagged(executed, "curves")) == 1
    assert images(tagged(executed, "grids")) == len(ipcs)
    # (c) Fashion-MNIST is not in the paper's Table 5, and the notebook says so
    hparams = "".join(o.get("text", "") for o in tagged(executed, "hparams").outputs)
    assert "No published reference for fashion-mnist" in hparams


def test_the_parameters_cell_comes_first_and_reads_the_environment() -> None:
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    first = next(c for c in notebook.cells if c.cell_type == "code")
    assert "parameters" in first.metadata.get("tags", [])
    assert 'RUN_DIR = os.environ.get("SELMATCH_RUN"' in first.source
    assert 'os.environ.get("SELMATCH_TRACKING_URI"' in first.source


def test_the_committed_notebook_has_no_outputs() -> None:
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    code = [c for c in notebook.cells if c.cell_type == "code"]
    assert code, "the notebook has no code"
    assert all(c.outputs == [] and c.execution_count is None for c in code), (
        "clear the notebook's outputs before committing it"
    )
