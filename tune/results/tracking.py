"""MLflow, behind one small adapter: a parent run per search, a child run per trial.

All logging happens in the driver (a Ray Tune callback and the search procedure), never in
the trials: trial processes run in other working directories and, on a cluster, on machines
that cannot reach the head's database file. The default store is a SQLite database under the
output folder, addressed by an absolute URI; ``--tracking-uri`` points at a server instead.

Child runs are created when a trial ends (completed or errored), tagged with the Tune trial
id; before creating one, the adapter looks for a run with that tag, so a resumed search never
logs a trial twice (a run that a kill left half-written, still RUNNING, is replaced).

A ``--tracking-uri`` is checked before anything starts, and the search's MLflow HTTP requests
give up within a minute: see :mod:`selmatch_tune.results.tracking_uri`.
"""

from __future__ import annotations

import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from ray.tune import Callback

from selmatch_tune.settings.phase_kinds import PHASES

EXPERIMENT = "selmatch-search"


def default_tracking_uri(out: Path) -> str:
    return f"sqlite:///{(out / 'mlflow.db').resolve()}"


UI_ADDRESS = "http://127.0.0.1:5000"


def ui_hint(uri: str, experiment_id: str) -> list[str]:
    """How to see an experiment's runs table in the MLflow UI: for a store (SQLite), the
    command that serves it on this machine only, light (2 processes instead of about 15: no
    job runner, one worker), then the address; for a server, the address. MLflow 3.17 opens
    an experiment on its GenAI overview; ``#/experiments/<id>/runs`` is the runs table (a route
    of its UI bundle)."""
    runs = f"#/experiments/{experiment_id}/runs"
    if uri.startswith(("http://", "https://")):
        return [f"MLflow UI: open {uri.rstrip('/')}/{runs}"]
    beside = Path(sys.executable).parent / "mlflow"  # the environment running the search
    mlflow = str(beside) if beside.is_file() else "mlflow"
    command = (
        f"MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false {shlex.quote(mlflow)} ui --workers 1 "
        f"--backend-store-uri {shlex.quote(uri)} --host 127.0.0.1 --port 5000"
    )
    return [f"MLflow UI: {command}", f"  then open {UI_ADDRESS}/{runs}"]


class Tracker:
    """``artifacts``: where a new experiment keeps its artifacts (for the default store, a
    folder next to the database; MLflow's own default is ``./mlruns`` of whatever the current
    directory is). A server (``--tracking-uri http://...``) decides that itself: leave None."""

    def __init__(
        self, uri: str, *, experiment: str = EXPERIMENT, artifacts: Path | None = None
    ) -> None:
        self.uri = uri
        self.client = MlflowClient(tracking_uri=uri)
        found = self.client.get_experiment_by_name(experiment)
        location = artifacts.resolve().as_uri() if artifacts is not None else None
        self.experiment_id = (
            found.experiment_id
            if found
            else self.client.create_experiment(experiment, artifact_location=location)
        )
        self.parent_id: str | None = None

    def start_parent(self, name: str, params: dict[str, Any], run_id: str | None = None) -> str:
        """Start the search's parent run, or reopen ``run_id`` (resume). A resumed search whose
        run this store does not hold (a moved folder, another tracking URI) gets a new parent
        run, tagged with the old id."""
        if run_id is not None and self._holds(run_id):
            self.client.update_run(run_id, status="RUNNING")
            self.parent_id = run_id
            return run_id
        tags = {"resumed_from": run_id} if run_id is not None else None
        run = self.client.create_run(self.experiment_id, run_name=name, tags=tags)
        self.parent_id = run.info.run_id
        for key, value in flatten(params).items():
            self.client.log_param(self.parent_id, key, _short(value))
        return self.parent_id

    def _holds(self, run_id: str) -> bool:
        try:
            return self.client.get_run(run_id).info.experiment_id == self.experiment_id
        except MlflowException:
            return False

    def _child(self, trial_id: str) -> Any | None:
        runs = self.client.search_runs(
            [self.experiment_id],
            filter_string=(
                f"tags.trial_id = '{trial_id}' and tags.mlflow.parentRunId = '{self.parent_id}'"
            ),
            max_results=1,
        )
        return runs[0] if runs else None

    def child_exists(self, trial_id: str) -> bool:
        """A complete child run: one that a kill cut short between its creation and its end
        (still RUNNING: its params or metrics may be missing) does not count."""
        run = self._child(trial_id)
        return run is not None and run.info.status != "RUNNING"

    def log_child(
        self,
        trial_id: str,
        name: str,
        tags: dict[str, str],
        params: dict[str, Any],
        metrics: dict[str, float],
        failed: bool,
    ) -> None:
        if self.parent_id is None:
            return
        existing = self._child(trial_id)
        if existing is not None:
            if existing.info.status != "RUNNING":
                return  # logged already (a resumed search)
            self.client.delete_run(existing.info.run_id)  # cut short by a kill: log it afresh
        run = self.client.create_run(
            self.experiment_id,
            run_name=name,
            tags={"mlflow.parentRunId": self.parent_id, "trial_id": trial_id, **tags},
        )
        run_id = run.info.run_id
        now = int(time.time() * 1000)
        batch = [Param(key, _short(value)) for key, value in params.items()]
        for start in range(0, max(len(batch), 1), 100):  # MLflow takes 100 params a batch
            self.client.log_batch(
                run_id,
                params=batch[start : start + 100],
                metrics=[] if start else [Metric(k, float(v), now, 0) for k, v in metrics.items()],
            )
        self.client.set_terminated(run_id, status="FAILED" if failed else "FINISHED")

    def log_parent_metrics(self, metrics: dict[str, float]) -> None:
        assert self.parent_id is not None
        for key, value in metrics.items():
            self.client.log_metric(self.parent_id, key, float(value))

    def log_artifact(self, path: Path, folder: str | None = None) -> None:
        assert self.parent_id is not None
        self.client.log_artifact(self.parent_id, str(path), artifact_path=folder)

    def ui_hint(self) -> list[str]:
        return ui_hint(self.uri, self.experiment_id)

    def finish(self, failed: bool = False) -> None:
        if self.parent_id is not None:
            self.client.set_terminated(self.parent_id, status="FAILED" if failed else "FINISHED")


class TrialLogger(Callback):
    """Ray Tune callback: one MLflow child run per finished trial."""

    METRICS = (
        "val_accuracy",
        "val_std",
        "test_accuracy",
        "test_std",
        "fetch_seconds",
        "work_seconds",
        "final_loss",
        "learned_lr",
    )

    def __init__(
        self,
        tracker: Tracker,
        *,
        phase: str,
        ipc: int,
        searched: str,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.tracker, self.phase, self.ipc, self.searched = tracker, phase, ipc, searched
        self.log = log

    def __getstate__(self) -> dict[str, Any]:
        # The callback is pickled with the experiment; a caller's log function need not be.
        return {k: v for k, v in self.__dict__.items() if k != "log"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        # Tuner.restore unpickles the callback saved with the experiment, possibly by an
        # earlier version of this class: fill in what it did not have.
        self.__dict__.update(state)
        self.__dict__.setdefault("log", print)

    def _log(self, trial: Any, failed: bool) -> None:
        result = trial.last_result or {}
        value = trial.config.get(self.searched)
        self.tracker.log_child(
            trial.trial_id,
            f"{self.phase}-ipc{self.ipc}-{self.searched}={value}",
            {"phase": self.phase, "ipc": str(self.ipc)},
            {
                "phase": self.phase,
                "ipc": self.ipc,
                "beta": trial.config.get("beta"),
                "alpha": trial.config.get("alpha"),
                "repeat": trial.config.get("repeat", 0),
                "init": trial.config.get("init", "window"),
                "method": trial.config.get("method", "selmatch"),
                "subsets": trial.config.get("subsets"),
                # a refining phase's value (T+) is Tune's choice under its name
                **{name: trial.config[name] for name in PHASES if name in trial.config},
            },
            {k: result[k] for k in self.METRICS if isinstance(result.get(k), (int, float))},
            failed,
        )

    def _name(self, trial: Any) -> str:
        """``β = 0.3 (trial 1a2b3c4d, repeat 1)``: what the terminal says about a trial."""
        kind = PHASES.get(self.searched)  # a baseline's trials: "init"
        symbol = kind.symbol if kind is not None else self.searched
        repeat = int(trial.config.get("repeat", 0))
        value = trial.config.get(self.searched)
        shown = f"{value:g}" if isinstance(value, (int, float)) else str(value)
        if self.searched == "init" and trial.config.get("alpha") is not None:
            shown += f", α = {trial.config['alpha']:g}"  # plain MTT: the random subset, α = 1
        return f"{symbol} = {shown} (trial {trial.trial_id}" + (
            f", repeat {repeat})" if repeat else ")"
        )

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if self.log:
            self.log(f"  IPC {self.ipc}: {self._name(trial)} started")

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._log(trial, failed=False)
        result = trial.last_result or {}
        if self.log and "val_accuracy" in result:
            val, test = 100 * result["val_accuracy"], 100 * result["test_accuracy"]
            self.log(
                f"  IPC {self.ipc}: {self._name(trial)}: val {val:.2f} %, test {test:.2f} %, "
                f"{result.get('work_seconds', 0.0):.0f} s"
            )

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._log(trial, failed=True)
        if self.log:
            error = str(getattr(trial, "error_file", "") or "see the Ray log")
            self.log(f"  IPC {self.ipc}: {self._name(trial)} failed ({error})")


def flatten(params: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out |= flatten(value, f"{name}.")
        else:
            out[name] = value
    return out


def _short(value: Any) -> str:
    text = str(value)
    return text if len(text) <= 500 else text[:497] + "..."
