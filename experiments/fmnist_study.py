"""The Fashion-MNIST study of docs/results.md (plans v1 and v2: docs/study-log.md): random
subset, oracle window, MTT, SelMatch (searched β, α) and SeqMatch at 1 / 2 / 5 / 10 % of the
data, the Table-3 ablation and coverage.

Every method gets the same budget, the compute plan (``PLANS`` below, stated in
docs/study-log.md). ``--plan v1`` is the first study (experts 2 x 5 epochs, start epochs
[0, 3), pixel lr 1000); ``--plan v2`` reruns it with what the budget probe found makes
distillation gain (experts 2 x 15 epochs, start epochs [8, 13), pixel lr 100), its search
included, at 1 / 5 / 10 %. The work is a list of steps, each a ``selmatch`` /
``search_alpha_beta.py`` command whose output file says it is done: rerunning the script skips
finished steps and resumes an interrupted distillation or search, so the study runs in chunks
(``--ipcs 60`` first, ``--stop-after 100`` to stop starting new steps after 100 minutes).
Every evaluation is logged to MLflow (``OUT/mlflow.db``, experiment ``fmnist-study`` or
``fmnist-study-v2``, one run per set) and the tables are written to
``experiments/results/fmnist-study[-v2|-v3]/``, together with what a fresh machine needs to go
on: the search's state, its cache of experts and consistency networks, the evaluations' JSON
files and each set's pictures, loss curve and manifest (never the set itself: a step remakes it
when a later step needs it). A run on a machine without ``OUT`` copies them back first, so only
the unfinished steps run; ``--no-restore`` measures every step again.

    python experiments/fmnist_study.py --plan v3                 # the current study, resumable
    python experiments/fmnist_study.py --ipcs 60 --stop-after 100
    python experiments/fmnist_study.py --dry-run      # print the commands only
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from selmatch_tune.results.record import SearchRecord

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
RESULTS_ROOT = ROOT / "experiments" / "results"
ABLATION_IPC = 60
CONVENTION = "data-fraction"
EVAL = ["--width", "32", "--seeds", "3", "--no-progress"]  # and the plan's --epochs
DISTILL = [
    "--student-steps",
    "20",
    "--expert-epochs",
    "2",
    "--syn-batch",
    "100",
    "--checkpoint-every",
    "25",
    "--no-progress",
]
ITERATIONS = 200


@dataclass(frozen=True)
class Plan:
    """One compute plan of the study: its experts and matching settings (the rest is common
    to both plans: model, score, evaluation, iterations, search grids)."""

    name: str
    folder: str  # under experiments/results/ and runs/
    ipcs: tuple[int, ...]
    expert_epochs: int
    matching: tuple[str, ...]  # the distillation's start-epoch range and pixel lr
    summary: dict[str, str]
    score: str = "el2n"  # the difficulty score the search and every window rank by
    search_options: tuple[str, ...] = ()  # the search's settings of that score, its α grid
    evaluation: str = "full:2"  # every evaluation's budget (``selmatch evaluate --epochs``)

    @property
    def results(self) -> Path:
        return RESULTS_ROOT / self.folder

    @property
    def experiment(self) -> str:
        return self.folder  # the MLflow experiment


COMMON = {
    "model": "ConvNet-D3 width 32, BatchNorm (experts, distillation and evaluation)",
    "score": "EL2N at epoch 2 (ascending = easiest first; no ties, unlike 5-epoch Forgetting)",
    "evaluation": "SGD lr 0.1 cosine, batch 128, the steps of 2 full-data epochs whatever the "
    "set size (196 / 98 / 39 / 20 epochs at 1 / 2 / 5 / 10 %), 3 seeds; DSA on real subsets, "
    "combined augmentation on distilled sets",
    "search": "tune/search_alpha_beta.py, quick preset at width 32 with the experts and "
    "matching settings of the plan: 10-point β and α grids, trials at 20 % of the evaluation "
    "budget, α trials 50 iterations",
}
PLANS = {
    "v1": Plan(
        "v1",
        "fmnist-study",
        (60, 120, 300, 600),
        5,
        ("--max-start-epoch", "3"),
        {
            **COMMON,
            "experts": "2 experts x 5 epochs on the whole pool (58,800 images), lr 0.01, batch "
            "256, DSA",
            "distillation": "N = 20 student steps, M = 2 expert epochs, start epochs in [0, 3), "
            "b = 100, pixel lr 1000, 200 iterations for every method (SeqMatch: K = 2 subsets x "
            "100)",
        },
    ),
    # the budget probe's best settings (docs/study-log.md, "Why distillation loses here")
    "v2": Plan(
        "v2",
        "fmnist-study-v2",
        (60, 300, 600),
        15,
        ("--min-start-epoch", "8", "--max-start-epoch", "13", "--lr-images", "100"),
        {
            **COMMON,
            "experts": "2 experts x 15 epochs on the whole pool (58,800 images), lr 0.01, batch "
            "256, DSA",
            "distillation": "N = 20 student steps, M = 2 expert epochs, start epochs in [8, 13) "
            "(the experts' later training), b = 100, pixel lr 100, 200 iterations for every "
            "method (SeqMatch: K = 2 subsets x 100, [8, 10) then [10, 13))",
        },
    ),
}
# issue 19: the consistency score (a hold-out C-score estimate) instead of EL2N, the fidelity
# fixes (ConvNet padding on 28x28, black crop padding, per-image DSA in combined augmentation,
# SelMatch's lr init 0.001: in the code), a search whose space contains random, MTT and the
# oracle window; v2's experts and matching settings
V3_SEARCH = (
    "--override",
    "consistency.model.width=32",
    "--override",
    "consistency.epochs=6",
    "--override",
    "consistency.per_class=null",
    "--alpha-grid",
    "0,0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,1",
)
PLANS["v3"] = Plan(
    "v3",
    "fmnist-study-v3",
    (60, 300, 600),
    15,
    PLANS["v2"].matching,
    {
        **COMMON,
        "score": "consistency (hold-out C-score estimate): 4 ConvNet-D3 width 32, each trained "
        "6 epochs (SGD 0.1 cosine, crop+flip) on a class-balanced half of the pool, every "
        "sample held out twice",
        "experts": PLANS["v2"].summary["experts"],
        "distillation": PLANS["v2"].summary["distillation"] + "; SelMatch from the search's "
        "initialisation (window at β*, or the random subset when it won the β phase)",
        "search": COMMON["search"] + "; the random subset a β candidate, α's 0 and 1 always "
        "evaluated, plain MTT an α candidate",
    },
    score="consistency",
    search_options=V3_SEARCH,
)
RESULTS = PLANS["v1"].results  # the first study (read by the budget probe)


def search_command(out: Path, ipcs: tuple[int, ...], plan: Plan = PLANS["v1"]) -> list[str]:
    return [
        str(BIN / "python"),
        str(ROOT / "tune" / "search_alpha_beta.py"),
        "--preset",
        "quick",
        "--out",
        str(out),
        "--ipcs",
        ",".join(map(str, ipcs)),
        "--width",
        "32",
        "--num-experts",
        "2",
        "--expert-train-epochs",
        str(plan.expert_epochs),
        "--score",
        plan.score,
        *plan.search_options,
        "--override",
        "experts.per_class=null",
        "--override",
        "experts.el2n_epoch=2",
        # the matching options mean in the search what they mean in `selmatch distill`
        "--student-steps",
        "20",
        *plan.matching,
        "--syn-batch",
        "100",
        "--iterations",
        "50",
        "--override",
        "short.full_epochs=0.4",
        "--override",
        "final.full_epochs=2",
        "--final-seeds",
        "2",
        "--full-eval-top",
        "1",
    ]


class Study:
    def __init__(
        self, out: Path, *, dry_run: bool, stop_after: float | None, plan: Plan = PLANS["v1"]
    ) -> None:
        self.out = out
        self.plan = plan
        self.dry_run = dry_run
        self.deadline = None if stop_after is None else time.monotonic() + 60 * stop_after
        self.log_path = out / "steps.log"

    def run(self, name: str, command: list[str], *done: Path) -> bool:
        """Run one step unless one of ``done`` exists; False when the time is up (nothing
        started)."""
        if any(path.exists() for path in done):
            return True
        if self.deadline is not None and time.monotonic() > self.deadline:
            print(f"[study] time is up: not starting {name}; rerun to go on")
            return False
        print(f"[study] {name}: {' '.join(command)}", flush=True)
        if self.dry_run:
            return True
        started = time.time()
        code = subprocess.run(command, cwd=ROOT).returncode
        if code != 0:
            raise SystemExit(
                f"[study] {name} stopped with exit code {code}; rerun to go on "
                "(finished steps are kept)"
            )
        with self.log_path.open("a") as handle:
            handle.write(f"{name}\t{time.time() - started:.0f} s\n")
        return True

    def selmatch(self, *args: str) -> list[str]:
        return [str(BIN / "selmatch"), *args]


def distill_step(
    study: Study,
    method: str,
    ipc: int,
    beta: float,
    alpha: float,
    experts: str,
    out: Path,
    *,
    iterations: int = ITERATIONS,
    extra: tuple[str, ...] = (),
    scores: str | None = None,
    later: tuple[Path, ...] = (),
) -> bool:
    """``extra`` options follow the plan's (a later value of an option wins). ``later``: the
    outputs of the later steps that read the set; until they all exist, a set whose evaluation
    is done but whose file is gone (sets are not committed) is distilled again."""
    iterations = iterations // 2 if method == "seqmatch" else iterations
    command = study.selmatch(
        "distill",
        "--method",
        method,
        "--ipc",
        str(ipc),
        "--experts",
        experts,
        "--scores",
        scores or experts,
        "--score",
        study.plan.score,
        "--beta",
        f"{beta:g}",
        "--beta-convention",
        CONVENTION,
        "--alpha",
        f"{alpha:g}",
        "--subsets",
        "2",
        *DISTILL,
        *study.plan.matching,
        *extra,
        "--iterations",
        str(iterations),
        "--out",
        str(out),
    )
    if (out / "checkpoint" / "state.json").exists():
        command.append("--resume")
    return study.run(f"distill {out.name}", command, *set_done(out, *later))


def set_done(out: Path, *later: Path) -> tuple[Path, ...]:
    """What says the set ``out`` is made: its file, or (sets are not committed) its evaluation
    once every output in ``later`` that reads the set exists too."""
    evaluated = (out.parent / f"eval-{out.name}.json", *later)
    if all(path.exists() for path in evaluated):
        return (out / "set.safetensors", evaluated[0])
    return (out / "set.safetensors",)


def evaluate_step(study: Study, name: str, *what: str, result: Path | None = None) -> bool:
    """Evaluate ``what`` (``--set DIR`` or ``--ipc N``) with the study's protocol into
    ``result`` (default ``OUT/eval-NAME.json``) unless it exists."""
    result = result or study.out / f"eval-{name}.json"
    return study.run(
        f"evaluate {name}",
        study.selmatch(
            "evaluate", *what, *EVAL, "--epochs", study.plan.evaluation, "--out", str(result)
        ),
        result,
    )


def winners(search: Path) -> dict[int, dict[str, Any]]:
    """The search's winners, with the folders of its experts and of its score table (both in
    the search's cache: retrained there, deterministically, on another machine)."""
    with open(search / "best_hparams.csv", newline="") as handle:
        rows = {int(r["ipc"]): r for r in csv.DictReader(handle)}
    record = SearchRecord.load(search)
    for row in rows.values():
        manifest = json.loads((Path(row["set_dir"]) / "manifest.json").read_text())
        experts = Path(manifest["experts"]["directory"])
        if not experts.is_dir():  # restored on another machine: the search's cache, retrained
            experts = search.parent / "cache" / experts.name
        row["experts"] = str(experts)
        scores = Path(record.score_dir or experts)
        row["scores"] = str(scores if scores.is_dir() else search.parent / "cache" / scores.name)
        row.setdefault("init", "window")  # a search from before the random candidate
    return rows


#: what is committed of a set: not ``set.safetensors`` (1.8 MB at IPC 60, 19 MB at IPC 600),
#: which its step remakes in minutes to an hour (steps.log) when a later step needs it
SET_FILES = ("manifest.json", "grid.png", "loss.csv", "loss.png")
#: the search's cache that is committed as it is (float32): its experts and consistency networks
#: (plan v3: 8.8 MB, which a fresh machine would otherwise retrain before the study could go on:
#: the two 15-epoch experts 14.5 min, the consistency networks about 12 min on 2 cores, in
#: docs/study-log.md), not SeqMatch's stage experts (one set per distillation)
CACHE_KEPT = ("fashion-mnist-", "consistency-fashion-mnist-")


def portable(out: Path, search: Path, results: Path) -> dict[Path, Path]:
    """What the committed results keep of a run folder, so that the study can go on from them
    on a fresh machine: {file in OUT: its copy under ``results``}."""
    pairs: dict[Path, Path] = {}
    if (search / "search_state.json").exists():
        pairs[search / "search_state.json"] = results / "search_state.json"
    for path in [*out.glob("eval-*.json"), *out.glob("coverage-*.json")]:
        pairs[path] = results / "evals" / path.name
    for directory in sorted((search.parent / "cache").glob("*")):
        if directory.is_dir() and directory.name.startswith(CACHE_KEPT):
            for path in directory.iterdir():
                pairs[path] = results / "cache" / directory.name / path.name
    sets = [d for d in out.iterdir() if d.is_dir() and "-ipc" in d.name]
    sets += [d for d in (search / "sets").glob("ipc*") if d.is_dir()]
    for directory in sets:
        if not (directory / "set.safetensors").exists():
            continue  # unfinished
        ipc = directory.name.rpartition("ipc")[2]
        name = "search-winner" if directory.parent.name == "sets" else directory.name
        for file in SET_FILES:
            if (directory / file).exists():
                pairs[directory / file] = results / f"ipc{ipc}-sets" / name / file
    return pairs


def restore(out: Path, search: Path, results: Path) -> None:
    """Copy the committed results back into an empty or partial OUT (a fresh machine): the
    search's state and its cache of experts and consistency networks (without them they are
    retrained, deterministically, when it resumes), the finished evaluations, the pictures and
    manifests of the evaluated sets and the steps' durations; finished steps are then skipped
    (a set that a later, unfinished step reads is distilled again: ``set_done``)."""
    copied = 0
    for directory in results.glob("ipc*-sets/*"):
        ipc = directory.parent.name.removesuffix("-sets")
        winner = directory.name == "search-winner"  # the search's own (its final evaluation)
        target = search / "sets" / ipc if winner else out / directory.name
        needed = (
            winner
            or (directory / "set.safetensors").exists()
            or (results / "evals" / f"eval-{directory.name}.json").exists()
        )
        if (target / "manifest.json").exists() or not needed:
            continue  # there already, or a set to distil again (never evaluated)
        target.mkdir(parents=True, exist_ok=True)
        for file in directory.iterdir():
            (target / file.name).write_bytes(file.read_bytes())
            copied += 1
    for committed in results.glob("cache/*/*"):  # the search's experts and scores
        target = search.parent / "cache" / committed.parent.name / committed.name
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(committed.read_bytes())
            copied += 1
    for committed in results.glob("evals/*.json"):
        if not (out / committed.name).exists():
            (out / committed.name).write_bytes(committed.read_bytes())
            copied += 1
    # the durations of the steps run elsewhere: collect copies OUT's log over the committed one
    if (results / "steps.log").exists() and not (out / "steps.log").exists():
        out.mkdir(parents=True, exist_ok=True)
        (out / "steps.log").write_bytes((results / "steps.log").read_bytes())
        copied += 1
    if (results / "search_state.json").exists() and not (search / "search_state.json").exists():
        search.mkdir(parents=True, exist_ok=True)
        record = SearchRecord.load(results)
        for ipc, entry in record.ipcs.items():  # where the restored winners now are
            if entry.set_dir is not None:
                entry.set_dir = str(search / "sets" / f"ipc{ipc}")
        record.save(search)
        copied += 1
    if copied:
        print(f"[study] restored {copied} file(s) from {results} into {out}")


def window_step(study: Study, ipc: int, row: dict[str, Any]) -> bool:
    """The oracle window at the searched β* (``OUT/window-ipcN``) unless it, or its
    evaluation, is there."""
    window, scores = study.out / f"window-ipc{ipc}", row.get("scores", row["experts"])
    return study.run(
        f"window ipc{ipc}",
        study.selmatch(
            "window",
            "--scores",
            scores,
            "--score",
            study.plan.score,
            "--ipc",
            str(ipc),
            "--beta",
            f"{float(row['beta']):g}",
            "--beta-convention",
            CONVENTION,
            "--out",
            str(window),
        ),
        window / "set.safetensors",
        study.out / f"eval-{window.name}.json",
    )


def selmatch_step(
    study: Study, ipc: int, row: dict[str, Any], later: tuple[Path, ...] = ()
) -> bool:
    """SelMatch as searched (``OUT/distill-selmatch-ipcN``): β*, α* and the winning
    initialisation, the window at β* or the random subset (seed: the split's)."""
    init = ("--init", "random", "--subset-seed", "0") if row.get("init") == "random" else ()
    return distill_step(
        study,
        "selmatch",
        ipc,
        float(row["beta"]),
        float(row["alpha"]),
        row["experts"],
        study.out / f"distill-selmatch-ipc{ipc}",
        extra=init,
        scores=row.get("scores", row["experts"]),
        later=later,
    )


def study_ipc(study: Study, ipc: int, row: dict[str, Any]) -> bool:
    """Each set is evaluated as soon as it is made, so a chunk that stops early leaves finished
    rows, not a stack of unevaluated sets."""
    out, experts, score = study.out, row["experts"], study.plan.score
    scores = row.get("scores", experts)  # the experts' own table unless the search said else
    beta, alpha = float(row["beta"]), float(row["alpha"])
    ok = evaluate_step(study, f"random-ipc{ipc}", "--ipc", str(ipc))
    window = out / f"window-ipc{ipc}"
    ok = ok and window_step(study, ipc, row)
    ok = ok and evaluate_step(study, window.name, "--set", str(window))
    distilled = {m: out / f"distill-{m}-ipc{ipc}" for m in ("selmatch", "mtt", "seqmatch")}
    for method, directory in distilled.items():
        later = readers(study, ipc, method)
        if method == "selmatch":
            ok = ok and selmatch_step(study, ipc, row, later)
        else:
            ok = ok and distill_step(
                study, method, ipc, beta, alpha, experts, directory, scores=scores, later=later
            )
        ok = ok and evaluate_step(study, directory.name, "--set", str(directory))
    if study.plan.name == "v3":
        ok = ok and seqmatch_variants(study, ipc, experts, scores, distilled["seqmatch"])
    if ipc != ABLATION_IPC:
        return ok
    # Table 3: selection init + partial update with DSA on the whole set (no combined
    # augmentation), then selection init without partial update (α = 1)
    dsa_only = ("--set", str(distilled["selmatch"]), "--augment", "dsa")
    ok = ok and evaluate_step(study, f"ablation-dsa-ipc{ipc}", *dsa_only)
    ablation = out / f"ablation-init-ipc{ipc}"
    ok = ok and distill_step(study, "selmatch", ipc, beta, 1.0, experts, ablation, scores=scores)
    ok = ok and evaluate_step(study, ablation.name, "--set", str(ablation))
    for method in ("selmatch", "mtt"):
        coverage = out / f"coverage-{method}-ipc{ipc}.json"
        ok = ok and study.run(
            f"coverage {method}",
            study.selmatch(
                "coverage",
                "--set",
                str(distilled[method]),
                "--experts",
                experts,
                "--scores",
                scores,
                "--score",
                score,
                "--out",
                str(coverage),
            ),
            coverage,
        )
    return ok


def readers(study: Study, ipc: int, method: str) -> tuple[Path, ...]:
    """The outputs of the steps after its evaluation that read the set ``distill-METHOD-ipcN``:
    the ablation and coverage at 1 %, SeqMatch's sequential evaluation (plan v3)."""
    out, outputs = study.out, []
    if ipc == ABLATION_IPC and method == "selmatch":
        outputs.append(out / f"eval-ablation-dsa-ipc{ipc}.json")
    if ipc == ABLATION_IPC and method in ("selmatch", "mtt"):
        outputs.append(out / f"coverage-{method}-ipc{ipc}.json")
    if study.plan.name == "v3" and method == "seqmatch":
        outputs.append(out / f"eval-distill-seqmatch-sequential-ipc{ipc}.json")
    return tuple(outputs)


#: SeqMatch's retrained stage experts in the study: as many as the ordinary experts, each first
#: taught the earlier subsets for the library's default 100 epochs per step
STAGE_EXPERTS = ("--seqmatch-experts", "retrained", "--stage-experts", "2")


def seqmatch_variants(study: Study, ipc: int, experts: str, scores: str, segment: Path) -> bool:
    """Issue 21's rows: SeqMatch with the authors' retrained stage experts (beside the segment
    variant ``segment``), each evaluated on the union of its subsets and in SeqMatch's
    sequential order. A segment set distilled before per-stage lrs were kept is distilled
    again (``distill-seqmatch-staged``) for its sequential row; its union row beside the first
    one shows the spread from one distillation to the next."""
    out = study.out
    retrained = out / f"distill-seqmatch-retrained-ipc{ipc}"
    cache = ("--stage-cache", str(out / "cache" / "stage-experts"))
    sequential = ("--eval-order", "sequential")
    in_order = out / f"eval-distill-seqmatch-retrained-sequential-ipc{ipc}.json"
    ok = distill_step(
        study,
        "seqmatch",
        ipc,
        0.0,
        1.0,
        experts,
        retrained,
        extra=(*STAGE_EXPERTS, *cache),
        scores=scores,
        later=(in_order,),
    )
    ok = ok and evaluate_step(study, retrained.name, "--set", str(retrained))
    ok = ok and evaluate_step(
        study, in_order.stem.removeprefix("eval-"), "--set", str(retrained), *sequential
    )
    manifest = segment / "manifest.json"
    if ok and manifest.exists() and not json.loads(manifest.read_text()).get("stage_lrs"):
        print(
            f"[study] {segment.name} was distilled before per-stage lrs were kept: distilling "
            "the segment variant again for its sequential evaluation"
        )
        segment = out / f"distill-seqmatch-staged-ipc{ipc}"
        in_order = out / f"eval-distill-seqmatch-sequential-ipc{ipc}.json"
        ok = distill_step(
            study, "seqmatch", ipc, 0.0, 1.0, experts, segment, scores=scores, later=(in_order,)
        )
        ok = ok and evaluate_step(study, segment.name, "--set", str(segment))
    return ok and evaluate_step(
        study, f"distill-seqmatch-sequential-ipc{ipc}", "--set", str(segment), *sequential
    )


def earlier_rows(have: set[tuple[str, int]], results: Path) -> list[dict[str, Any]]:
    """Rows of the committed results.csv that no evaluation file in OUT backs any more (an
    earlier chunk measured them on a machine whose file was not kept): a measurement is never
    dropped from the tables; rerunning its evaluation replaces it."""
    if not (results / "results.csv").exists():
        return []
    with open(results / "results.csv", newline="") as handle:
        kept = [r for r in csv.DictReader(handle) if (r["method"], int(r["ipc"])) not in have]
    for row in kept:
        row.update(
            ipc=int(row["ipc"]),
            epochs=int(row["epochs"]),
            seeds=int(row["seeds"]),
            **{k: float(row[k]) for k in ("test_mean", "test_std", "val_mean")},
        )
    if kept:
        print(
            f"[study] kept {len(kept)} earlier row(s) of {results / 'results.csv'} "
            "without an evaluation file"
        )
    return kept


def read_evaluations(out: Path) -> list[dict[str, Any]]:
    """One row per evaluation file ``eval-<method>-ipc<IPC>.json`` in ``out``."""
    rows = []
    for path in sorted(out.glob("eval-*.json")):
        payload = json.loads(path.read_text())
        result = payload["result"]
        name = path.stem.removeprefix("eval-")
        method, _, ipc = name.rpartition("-ipc")
        rows.append(
            {
                "method": method,
                "ipc": int(ipc),
                "test_mean": result["test_mean"],
                "test_std": result["test_std"],
                "val_mean": result["val_mean"],
                "epochs": result["epochs"],
                "seeds": len(result["seeds"]),
            }
        )
    return rows


def log_to_mlflow(out: Path, experiment: str, rows: list[dict[str, Any]]) -> None:
    """One MLflow run per row in ``OUT/mlflow.db`` (never twice: a row's run is tagged)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{out.resolve() / 'mlflow.db'}")
    found = client.get_experiment_by_name(experiment)
    experiment_id = found.experiment_id if found else client.create_experiment(experiment)
    logged = {r.data.tags.get("set") for r in client.search_runs([experiment_id])}
    for row in rows:
        key = f"{row['method']}-ipc{row['ipc']}"
        if key in logged:
            continue
        run = client.create_run(experiment_id, run_name=key, tags={"set": key})
        for param in ("method", "ipc", "epochs", "seeds"):
            client.log_param(run.info.run_id, param, row[param])
        for metric in ("test_mean", "test_std", "val_mean"):
            client.log_metric(run.info.run_id, metric, row[metric])
        client.set_terminated(run.info.run_id)


def collect(out: Path, search: Path, plan: Plan = PLANS["v1"]) -> None:
    """Results into MLflow (one run per evaluated set, never twice) and into committed tables."""
    rows = read_evaluations(out)
    results = plan.results
    rows += earlier_rows({(r["method"], r["ipc"]) for r in rows}, results)
    log_to_mlflow(out, plan.experiment, rows)
    results.mkdir(parents=True, exist_ok=True)
    rows.sort(key=lambda r: (r["method"], r["ipc"]))
    with open(results / "results.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]) if rows else ["method"])
        writer.writeheader()
        writer.writerows(rows)
    coverage = {p.stem: json.loads(p.read_text()) for p in sorted(out.glob("coverage-*.json"))}
    (results / "coverage.json").write_text(json.dumps(coverage, indent=2) + "\n")
    for path, copy in portable(out, search, results).items():
        copy.parent.mkdir(parents=True, exist_ok=True)
        copy.write_bytes(path.read_bytes())
    if (search / "best_hparams.csv").exists():
        (results / "best_hparams.csv").write_text((search / "best_hparams.csv").read_text())
    for png in search.glob("*-ipc*.png"):
        (results / png.name).write_bytes(png.read_bytes())
    steps = out / "steps.log"
    if steps.exists():
        (results / "steps.log").write_text(steps.read_text())
    (results / "plan.json").write_text(json.dumps(plan.summary, indent=2) + "\n")
    (results / "tables.md").write_text(tables(rows, coverage))
    print(
        f"[study] {len(rows)} evaluations: {results / 'results.csv'}; MLflow: {out / 'mlflow.db'}"
    )


METHODS = {
    "random": "random subset",
    "window": "oracle window",
    "distill-mtt": "MTT",
    "distill-selmatch": "SelMatch",
    "distill-seqmatch": "SeqMatch (segment, union)",
    "distill-seqmatch-staged": "SeqMatch (segment, union; distilled again with its per-stage lrs)",
    "distill-seqmatch-sequential": "SeqMatch (segment, sequential)",
    "distill-seqmatch-retrained": "SeqMatch (retrained stage experts, union)",
    "distill-seqmatch-retrained-sequential": "SeqMatch (retrained, sequential: the authors')",
}
ABLATION = {
    "distill-mtt": "MTT (random real init, every image learned, DSA)",
    "ablation-init": "+ selection init (window at β*, α = 1)",
    "ablation-dsa": "+ partial update (α*, DSA on the whole set)",
    "distill-selmatch": "+ combined augmentation (= SelMatch)",
}


def tables(rows: list[dict[str, Any]], coverage: dict[str, Any]) -> str:
    """The study's tables in Markdown (test accuracy %, mean ± std over seeds)."""
    cell = {
        (r["method"], r["ipc"]): f"{100 * r['test_mean']:.2f} ± {100 * r['test_std']:.2f}"
        for r in rows
    }
    ipcs = sorted({r["ipc"] for r in rows})
    lines = [
        "| method | " + " | ".join(f"IPC {i} ({i / 60:g} %)" for i in ipcs) + " |",
        "|---|" + "---|" * len(ipcs),
    ]
    for key, name in METHODS.items():
        lines.append(f"| {name} | " + " | ".join(cell.get((key, i), "—") for i in ipcs) + " |")
    lines += ["", f"Ablation (Table 3) at IPC {ABLATION_IPC}:", "", "| | test % |", "|---|---|"]
    lines += [
        f"| {name} | {cell.get((key, ABLATION_IPC), '—')} |" for key, name in ABLATION.items()
    ]
    if coverage:
        lines += [
            "",
            f"Coverage at IPC {ABLATION_IPC} (share of samples within r of the set):",
            "",
            "| set | r | test | train | train easy half | train hard half |",
            "|---|---|---|---|---|---|",
        ]
        for name, c in coverage.items():
            lines.append(
                f"| {name.removeprefix('coverage-')} | {c['radius']:.3g} | "
                f"{c['test']:.3f} | {c['train']:.3f} | {c['train_easy']:.3f} | "
                f"{c['train_hard']:.3f} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--plan",
        choices=sorted(PLANS),
        default="v1",
        help="compute plan: v1, the first study (experts 2 x 5 epochs, start "
        "epochs [0, 3), pixel lr 1000), or v2, the budget probe's best "
        "(experts 2 x 15 epochs, start epochs [8, 13), pixel lr 100), or v3, "
        "v2 ranked by the consistency score with issue 19's fixes and a "
        "search that contains random, MTT and the oracle window "
        "(default: v1)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="working folder (default: runs/fmnist-study for v1, "
        "runs/fmnist-study-v2 for v2, runs/fmnist-study-v3 for v3)",
    )
    parser.add_argument(
        "--ipcs",
        default=None,
        help="IPCs to study in this chunk (default: all of the plan's: "
        "60,120,300,600 for v1, 60,300,600 for v2 and v3)",
    )
    parser.add_argument(
        "--stop-after",
        type=float,
        default=None,
        metavar="MINUTES",
        help="start no new step after this many minutes",
    )
    parser.add_argument("--dry-run", action="store_true", help="print the commands only")
    parser.add_argument(
        "--no-restore",
        action="store_true",
        help="do not copy the committed results into OUT first: every step "
        "without its output in OUT runs (to measure the study again, with a "
        "fresh --out)",
    )
    parser.add_argument(
        "--collect",
        action="store_true",
        help="only gather finished results into MLflow and the tables",
    )
    args = parser.parse_args(argv)
    plan = PLANS[args.plan]
    out = args.out or ROOT / "runs" / plan.folder
    search = out / "search"
    if args.collect:
        collect(out, search, plan)
        return 0
    allowed = ",".join(map(str, plan.ipcs))
    try:
        ipcs = tuple(int(v) for v in (args.ipcs or allowed).split(","))
    except ValueError:
        parser.error(f"--ipcs must be a comma-separated list among {allowed}, got {args.ipcs}")
    if not set(ipcs) <= set(plan.ipcs):
        parser.error(f"--ipcs must be among {allowed} (plan {plan.name}), got {args.ipcs}")
    out.mkdir(parents=True, exist_ok=True)
    if not args.dry_run and not args.no_restore:
        restore(out, search, plan.results)
    study = Study(out, dry_run=args.dry_run, stop_after=args.stop_after, plan=plan)
    # The search grows with the chunks: every IPC up to the largest of this chunk (a larger
    # IPC's grids are bounded by the smaller IPCs' winners, so they are searched in order).
    searched = tuple(i for i in plan.ipcs if i <= max(ipcs))
    command = search_command(search, searched, plan)
    if (search / "search_state.json").exists():
        command.append("--resume")
    if not study.run(
        f"search {','.join(map(str, searched))}", command, search / f"done-{max(ipcs)}"
    ):
        return 0
    if args.dry_run:
        if not (search / f"done-{max(ipcs)}").exists():
            return 0  # the steps after the search need its winners
    else:
        (search / f"done-{max(ipcs)}").touch()
    rows = winners(search)
    for ipc in ipcs:
        if not study_ipc(study, ipc, rows[ipc]):
            break
    if not args.dry_run:
        collect(out, search, plan)
    return 0


if __name__ == "__main__":
    sys.exit(main())
