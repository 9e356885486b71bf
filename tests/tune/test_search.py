"""The search end to end, on a real local Ray, real Optuna, real MLflow and real data."""

import csv
import json
import shutil

import pytest
from mlflow.tracking import MlflowClient

from selmatch.core.config import ConfigError
from selmatch.sets.synthetic import SyntheticSet
from selmatch_tune.flow import finals as finals_module
from selmatch_tune.flow import phases as phases_module
from selmatch_tune.flow import search as search_module
from selmatch_tune.flow.search import check_resources, run_search
from selmatch_tune.results.costs import stage_costs
from selmatch_tune.results.record import SearchRecord
from selmatch_tune.search_alpha_beta import apply_overrides, apply_sets, build_parser, overridden
from selmatch_tune.settings.presets import smoke


@pytest.fixture
def smoke_run(local_ray, smoke_search):
    """The session's smoke search (tests/tune/conftest.py), with this module's Ray up."""
    return smoke_search


def test_smoke_search_writes_the_table_sets_and_curves(smoke_run) -> None:
    out, rows = smoke_run
    config = smoke()
    assert [r["ipc"] for r in rows] == [2, 4]
    with open(out / "best_hparams.csv") as handle:
        table = list(csv.DictReader(handle))
    assert [int(r["ipc"]) for r in table] == [2, 4]
    for row in table:
        assert float(row["beta"]) in config.beta_grid
        assert float(row["alpha"]) in config.alpha_grid
        assert 0.0 < float(row["final_test_mean"]) <= 1.0
        # the reference: a random subset of the same size, trained like the winner
        assert 0.0 < float(row["random_test_mean"]) <= 1.0
        assert float(row["random_test_std"]) >= 0.0
        assert int(row["beta_trials"]) >= 1 and int(row["alpha_trials"]) >= 1
        saved = SyntheticSet.load(row["set_dir"])
        assert saved.manifest["method"] == "selmatch"
        assert saved.manifest["distill"]["alpha"] == float(row["alpha"])
        assert saved.manifest["init"] == row["init"]  # the table and the set agree
        if row["init"] == "window":  # the α search read its window exactly as the β search
            assert saved.manifest["window"] == {
                "ipc": int(row["ipc"]),
                "beta": float(row["beta"]),
                "alpha": float(row["alpha"]),
                "beta_convention": config.beta_convention,
            }
        assert saved.manifest["distill"]["score"] == config.score
        assert saved.manifest["experts"]["directory"].startswith(
            str((out.parent / "cache").resolve())
        )
        assert len(saved.labels) == 10 * int(row["ipc"])
    # the paper's monotonicity: the larger IPC searched only β ≤ β*(smaller IPC)
    assert float(table[1]["beta"]) <= float(table[0]["beta"])
    for name in ("beta-ipc2.png", "alpha-ipc2.png", "beta-ipc4.png", "alpha-ipc4.png"):
        assert (out / name).stat().st_size > 5000
    # what the answer cost, by stage: every stage the search ran was timed
    record = SearchRecord.load(out)
    stages = {row.stage: row for row in stage_costs(record)}
    assert {"precompute", "beta", "beta_random", "alpha", "final", "other"} <= set(stages)
    assert all(row.seconds > 0 for name, row in stages.items() if name != "other")
    assert sum(row.seconds for row in stages.values()) == pytest.approx(record.seconds)
    assert stages["alpha"].trial_seconds > 0 and stages["alpha"].idle_slot_seconds >= 0
    assert "| α trials |" in (out / "costs.md").read_text()


def test_trials_are_ranked_on_validation_and_logged_to_mlflow(smoke_run) -> None:
    out, _ = smoke_run
    state = json.loads((out / "search_state.json").read_text())
    client = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("selmatch-search")
    parent = client.get_run(state["parent_run_id"])
    assert parent.info.status == "FINISHED"
    children = client.search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{state['parent_run_id']}'",
    )
    expected = sum(e[p]["trials"] for e in state["ipcs"].values() for p in ("beta", "alpha"))
    expected += sum(
        e["beta"]["random"]["n"] + e["alpha"].get("mtt", {}).get("n", 0)
        for e in state["ipcs"].values()
    )  # the baselines are trials too
    assert len(children) == expected
    assert {c.data.tags["phase"] for c in children} == {"beta", "alpha"}
    assert all(
        "val_accuracy" in c.data.metrics and "test_accuracy" in c.data.metrics for c in children
    )
    for entry in state["ipcs"].values():
        for phase in ("beta", "alpha"):
            curve = entry[phase]["curve"]
            best = max(curve, key=lambda v: curve[v]["val"])
            assert float(best) == entry[phase]["best"]  # chosen on validation, not test
    assert parent.data.tags["ipcs"] == "2,4"
    # each phase's searcher declared itself finished (what tells a finished search from a
    # Ctrl-C'd one, even when trials still running then finish afterwards)
    assert sorted(p.name for p in (out / "phases").iterdir()) == [
        "alpha-ipc2.finished",
        "alpha-ipc4.finished",
        "beta-ipc2.finished",
        "beta-ipc4.finished",
    ]
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"best_hparams.csv", "search_state.json", "curves", "sets"} <= artifacts
    # the artifacts live under --out, not in ./mlruns of the current directory
    assert list((out / "mlartifacts").rglob("best_hparams.csv"))


def test_the_search_space_contains_its_baselines(smoke_run) -> None:
    out, rows = smoke_run
    config = smoke()
    state = json.loads((out / "search_state.json").read_text())
    for row in rows:
        entry = state["ipcs"][str(row["ipc"])]
        beta, alpha = entry["beta"], entry["alpha"]
        # the random subset was a β candidate, with the repeats of a close top
        assert beta["random"]["n"] == 1 + config.top_repeats
        best_window = beta["curve"][str(beta["best"])]["val"]
        assert beta["init"] == ("random" if beta["random"]["val"] > best_window else "window")
        assert alpha["init"] == beta["init"]
        # α's ends were evaluated whatever the monotone bound said
        assert {"0.0", "1.0"} <= set(alpha["curve"])
        if beta["init"] == "window":
            # α = 0 from the window is the oracle window itself: same set, seeds, augmentation
            assert alpha["curve"]["0.0"]["val"] == pytest.approx(best_window, abs=1e-12)
            assert alpha["mtt"]["n"] == 1  # plain MTT was a candidate
        assert row["random_short_val"] == beta["random"]["val"]
        # the finalists: the selections (the random subset, the window at β), the α phase's
        # best learned α values and plain MTT, all at the target budget on the same seeds;
        # the winner is the best of them on validation there
        finalists = entry["final"]["finalists"]
        learned = sorted(
            (v for v in alpha["curve"] if float(v) > 0), key=lambda v: -alpha["curve"][v]["val"]
        )
        expected = {"the random subset", f"the window β={beta['best']:g}"}
        start = "" if alpha["init"] == "window" else " from the random subset"
        expected |= {f"SelMatch α={float(v):g}{start}" for v in learned[: config.finalists]}
        expected |= {"plain MTT"} if "mtt" in alpha else set()
        assert set(finalists) == expected
        assert {tuple(f["seeds"]) for f in finalists.values()} == {tuple(config.final.seeds)}
        best = max(finalists, key=lambda k: finalists[k]["val_mean"])
        assert finalists[best]["val_mean"] == entry["final"]["val_mean"] == row["final_val_mean"]
        assert finalists[best]["test_mean"] == row["final_test_mean"]
        assert row["finalists"] == len(finalists) and row["target_budget"]
        # the reference is the random subset's finalist evaluation, not a second one
        assert entry["final"]["random"]["test_mean"] == finalists["the random subset"]["test_mean"]


def test_a_random_subset_that_beats_every_window_starts_the_alpha_phase(local_ray, tmp_path):
    # the hardest window (β = 0) of a tiny budget loses to the random subset (deterministic:
    # every seed is fixed); the α phase then starts from that random subset
    config = smoke().replace(ipcs=(4,), beta_grid=(0.0,), alpha_grid=(0.0, 1.0))
    rows = run_search(config, tmp_path / "random-init", log=lambda *_: None)
    state = json.loads((tmp_path / "random-init" / "search_state.json").read_text())
    entry = state["ipcs"]["4"]
    assert entry["beta"]["init"] == "random" and entry["alpha"]["init"] == "random"
    assert "mtt" not in entry["alpha"]  # α = 1 from the random subset is MTT already
    # α = 0 from the random subset is the β phase's random candidate, evaluated alike
    assert entry["alpha"]["curve"]["0.0"]["val"] == pytest.approx(entry["beta"]["random"]["val"])
    assert rows[0]["init"] == "random"
    saved = SyntheticSet.load(rows[0]["set_dir"])
    assert saved.manifest["init"] == "random" and "window" not in saved.manifest
    assert saved.manifest["subset_seed"] == config.experts.split_seed
    if rows[0]["alpha"] == 0:  # the winner is the random subset: one evaluation serves both
        assert rows[0]["random_test_mean"] == rows[0]["final_test_mean"]


def test_seqmatch_competes_with_selmatch_and_its_stage_experts_run_in_ray(smoke_run):
    # --method both with the authors' retrained stage experts; the folder sits beside the
    # smoke search's, so it reuses its expert cache
    out = smoke_run[0].parent / "seqmatch"
    base = smoke()
    config = base.replace(
        ipcs=(4,),
        beta_grid=(0.0,),
        alpha_grid=(0.0, 1.0),
        methods=("selmatch", "seqmatch"),
        subsets_grid=(2,),
        seqmatch_experts="retrained",
        stage_parallel=1,
        finalists=0,  # decided at the short budget, where the K phase competes
        distill=base.distill.replace(stage_experts=2, stage_prefix_epochs=2),
    )
    lines: list[str] = []
    rows = run_search(config, out, log=lines.append)
    entry = json.loads((out / "search_state.json").read_text())["ipcs"]["4"]
    seq = entry["subsets"]
    assert set(seq["curve"]) == {"2.0"} and seq["seqmatch_experts"] == "retrained"
    # the winner is the best on validation of every candidate, and the table says which
    alpha = entry["alpha"]
    candidates = {
        "seqmatch": seq["curve"]["2.0"]["val"],
        **{f"alpha={a}": c["val"] for a, c in alpha["curve"].items()},
        **({"mtt": alpha["mtt"]["val"]} if "mtt" in alpha else {}),
    }
    (row,) = rows
    assert row["short_val_accuracy"] == max(candidates.values())
    seq_won = candidates["seqmatch"] > max(v for k, v in candidates.items() if k != "seqmatch")
    assert (row["method"] == "seqmatch") == seq_won
    assert row["seqmatch_short_val"] == candidates["seqmatch"] and row["subsets_trials"] == 1
    saved = SyntheticSet.load(row["set_dir"])
    assert saved.manifest["method"] == row["method"].replace("mtt", "selmatch")
    # the K trial's set (its checkpoint): SeqMatch with stage experts retrained on S1
    (manifest,) = [
        json.loads(p.read_text())
        for p in (out / "ray" / "subsets-ipc4").rglob("manifest.json")
        if "stage_lrs" in p.read_text()
    ]
    assert manifest["method"] == "seqmatch" and manifest["seqmatch_experts"] == "retrained"
    assert len(manifest["stage_lrs"]) == 2 and len(manifest["stage_expert_folders"]) == 1
    assert manifest["distill"]["subsets"] == 2 and manifest["distill"]["stage_experts"] == 2
    # logged to MLflow like every trial
    client = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("selmatch-search")
    (child,) = client.search_runs([experiment.experiment_id], "tags.phase = 'subsets'")
    assert child.data.params["method"] == "seqmatch" and child.data.params["subsets"] == "2.0"
    assert any("SeqMatch (K = 2) val" in line for line in lines)
    assert (out / "subsets-ipc4.png").stat().st_size > 5000


def test_stage_experts_map_onto_ray_tasks_in_order(local_ray, trial_spec) -> None:
    import os

    from selmatch_tune.flow.trials import stage_expert_mapper

    spec = trial_spec()
    assert stage_expert_mapper(spec) is map  # in the trial
    mapper = stage_expert_mapper(spec.replace(stage_parallel=1))
    results = list(mapper(lambda index: (index, os.getpid()), [3, 1, 2]))
    assert [index for index, _ in results] == [3, 1, 2]
    assert all(pid != os.getpid() for _, pid in results)  # trained in Ray workers


def test_a_second_run_in_the_same_folder_needs_resume(smoke_run, tmp_path) -> None:
    out, _ = smoke_run
    with pytest.raises(ConfigError, match="add --resume"):
        run_search(smoke(), out, log=lambda *_: None)
    # and --resume of a folder that holds no search is an error, not a new search
    with pytest.raises(ConfigError, match="--resume: .* holds no search"):
        run_search(smoke(), tmp_path / "typo", resume=True, log=lambda *_: None)


def test_a_moved_search_folder_resumes_with_its_sets(smoke_run, tmp_path) -> None:
    out, rows = smoke_run
    moved = tmp_path / "elsewhere" / "smoke"
    shutil.copytree(out, moved, ignore=shutil.ignore_patterns("ray"))
    state = json.loads((moved / "search_state.json").read_text())
    for entry in state["ipcs"].values():  # the old folder is gone (another machine)
        entry["set_dir"] = entry["set_dir"].replace(str(out), "/nonexistent/old-machine")
    # a search finished before the random reference existed: resuming evaluates it, only it
    del state["ipcs"]["4"]["final"]["random"]
    (moved / "search_state.json").write_text(json.dumps(state))
    lines: list[str] = []
    again = run_search(smoke(), moved, resume=True, log=lines.append)
    told = [line for line in lines if "random subset of the same size (the reference)" in line]
    resumed_state = json.loads((moved / "search_state.json").read_text())
    final = resumed_state["ipcs"]["4"]["final"]
    if state["ipcs"]["4"]["winner"] == {"init": "random", "alpha": 0.0, "candidate": "alpha"}:
        # the winner is the random subset: its own evaluation is the reference
        assert told == [] and final["random"]["test_mean"] == final["test_mean"]
    else:
        assert told == [
            "IPC 4: final evaluation of a random subset of the same size (the reference)"
        ]
    assert resumed_state["ipcs"]["2"]["final"] == state["ipcs"]["2"]["final"]
    reference = final["random"]
    assert 0.0 < reference["test_mean"] <= 1.0
    # trained like the winner: the same seeds
    assert reference["seeds"] == resumed_state["ipcs"]["4"]["final"]["seeds"]
    assert len(reference["seeds"]) == smoke().final.num_seeds
    assert [r["ipc"] for r in again] == [r["ipc"] for r in rows]
    for row in again:  # nothing was searched again: same winners, their sets found under moved
        assert row["set_dir"] == str(moved / "sets" / f"ipc{row['ipc']}")
        assert SyntheticSet.load(row["set_dir"]).images.shape[0] == 10 * row["ipc"]
    assert [(r["beta"], r["alpha"]) for r in again] == [(r["beta"], r["alpha"]) for r in rows]
    # in a store without its parent run (another --tracking-uri, a new machine) it gets a new one
    other = f"sqlite:///{tmp_path / 'other.db'}"
    run_search(smoke(), moved, resume=True, tracking_uri=other, log=lambda *_: None)
    resumed = json.loads((moved / "search_state.json").read_text())["parent_run_id"]
    client = MlflowClient(tracking_uri=other)
    run = client.get_run(resumed)
    assert resumed != state["parent_run_id"]
    assert run.data.tags["resumed_from"] == state["parent_run_id"]
    assert run.info.status == "FINISHED"
    location = client.get_experiment(run.info.experiment_id).artifact_location
    assert location == (moved / "mlartifacts").as_uri()  # a local store: next to the search


def test_resume_after_an_interruption_loses_and_duplicates_nothing(
    local_ray, tmp_path, monkeypatch
) -> None:
    config = smoke().replace(ipcs=(2,))
    out = tmp_path / "interrupted"
    real = finals_module.final_evaluation

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt  # the user presses Ctrl-C during the final evaluation

    monkeypatch.setattr(finals_module, "final_evaluation", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_search(config, out, log=lambda *_: None)
    state = json.loads((out / "search_state.json").read_text())
    assert "alpha" in state["ipcs"]["2"] and "final" not in state["ipcs"]["2"]
    monkeypatch.setattr(finals_module, "final_evaluation", real)
    rows = run_search(config, out, resume=True, log=lambda *_: None)
    assert [r["ipc"] for r in rows] == [2]
    state = json.loads((out / "search_state.json").read_text())
    client = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    children = client.search_runs(
        [client.get_experiment_by_name("selmatch-search").experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{state['parent_run_id']}'",
    )
    entry = state["ipcs"]["2"]
    baselines = entry["beta"]["random"]["n"] + entry["alpha"].get("mtt", {}).get("n", 0)
    assert len(children) == entry["beta"]["trials"] + entry["alpha"]["trials"] + baselines
    assert len({c.data.tags["trial_id"] for c in children}) == len(children)
    # a finished search grows by IPCs on resume (a study run in chunks); nothing else changes
    with pytest.raises(ConfigError, match=r"other settings \(noise\); use the same ones"):
        run_search(config.replace(noise=0.5), out, resume=True, log=lambda *_: None)
    with pytest.raises(ConfigError, match="--ipcs must start with the IPCs .* has begun \\(2\\)"):
        run_search(config.replace(ipcs=(4,)), out, resume=True, log=lambda *_: None)
    rows = run_search(config.replace(ipcs=(2, 4)), out, resume=True, log=lambda *_: None)
    assert [r["ipc"] for r in rows] == [2, 4]
    grown = json.loads((out / "search_state.json").read_text())
    assert grown["ipcs"]["2"] == state["ipcs"]["2"]  # IPC 2 was not searched again
    assert grown["ipcs"]["4"]["beta"]["best"] <= grown["ipcs"]["2"]["beta"]["best"]


def test_own_small_data_fits_the_preset_and_a_failed_start_blocks_nothing(
    local_ray, own_folder, tmp_path, monkeypatch
) -> None:
    # settings sized for Fashion-MNIST's 6,000 images per class, on a folder of 150
    config = smoke().replace(
        dataset=own_folder,
        ipcs=(2, 200),
        predict_ipcs=(2, 3, 500),
        beta_grid=(0.0, 0.6),
        alpha_grid=(0.0, 1.0),
        experts=smoke().experts.replace(dataset=own_folder, per_class=1000),
        consistency=smoke().consistency.replace(dataset=own_folder, per_class=1000),
    )
    out = tmp_path / "own"

    def failed(*args, **kwargs):
        raise RuntimeError("injected: the node training the experts died")

    real = search_module.precompute_all
    monkeypatch.setattr(search_module, "precompute_all", failed)
    with pytest.raises(RuntimeError, match="injected"):
        run_search(config, out, log=lambda *_: None)
    monkeypatch.setattr(search_module, "precompute_all", real)
    lines: list[str] = []
    rows = run_search(config, out, log=lines.append)  # the same call: no --resume needed
    assert any("stopped before its first trial: starting it anew" in line for line in lines)
    fitted = [line for line in lines if line.startswith(f"fitted to {own_folder}: ")]
    assert len(fitted) == 4, fitted  # experts, consistency, an IPC, a predicted IPC
    assert [r["ipc"] for r in rows] == [2]
    state = json.loads((out / "search_state.json").read_text())
    assert state["started"] is True and state["config"]["experts"]["per_class"] == 140
    # predictions only for the IPCs not searched
    predicted = [line.strip() for line in lines if line.startswith("  IPC ") and "≈" in line]
    assert [line.split(":")[0] for line in predicted] == ["IPC 3"]


def test_asking_for_gpus_on_a_cpu_cluster_is_an_error(local_ray) -> None:
    with pytest.raises(
        ConfigError, match=r"--gpus-per-trial 1 asks for GPUs, but the Ray cluster has 0"
    ):
        check_resources(smoke().replace(gpus_per_trial=1.0))
    # on an autoscaling cluster it asks and waits first; a local Ray has no autoscaler to add
    # GPUs, so the same error comes after the wait, and it says so
    said = []
    with pytest.raises(ConfigError, match=r"has 0 after waiting 1 s; .*--wait-for-resources"):
        check_resources(smoke().replace(gpus_per_trial=1.0), wait=1.0, log=said.append)
    assert "asked the autoscaler for 2 x {'CPU': 1.0, 'GPU': 1.0}" in said[0]
    with pytest.raises(ConfigError, match=r"--cpus-per-trial must be ≤ 2 \(the cluster's CPUs"):
        check_resources(smoke().replace(cpus_per_trial=3.0))
    assert check_resources(smoke()) == {"cpu": 1.0, "gpu": 0.0}


def test_command_line_overrides_reach_every_config() -> None:
    args = build_parser().parse_args(
        [
            "--preset",
            "smoke",
            "--ipcs",
            "3,6",
            "--width",
            "12",
            "--iterations",
            "7",
            "--final-seeds",
            "2",
            "--no-monotone",
            "--beta-grid",
            "0,0.5",
            "--lr-images",
            "100",
            "--no-random-reference",
        ]
    )
    config = apply_overrides(smoke(), args)
    assert config.ipcs == (3, 6) and config.beta_grid == (0.0, 0.5) and not config.monotone
    assert config.distill.lr_images == 100.0 and not config.random_reference
    assert smoke().random_reference and smoke().distill.lr_images != 100.0
    assert config.experts.model.width == config.short.model.width == config.final.model.width == 12
    assert config.distill.iterations == 7 and config.final.num_seeds == 2
    with pytest.raises(ConfigError, match="^--ipcs must be distinct and increasing"):
        apply_overrides(smoke(), build_parser().parse_args(["--ipcs", "6,3"]))
    # the experts' count and epochs have their own flags; --expert-epochs is M, as in distill
    args = build_parser().parse_args(
        [
            "--num-experts",
            "3",
            "--expert-train-epochs",
            "7",
            "--expert-epochs",
            "1",
            "--method",
            "both",
        ]
    )
    config = apply_overrides(smoke(), args)
    assert (config.experts.num_experts, config.experts.epochs) == (3, 7)
    assert config.distill.expert_epochs == 1 and config.methods == ("selmatch", "seqmatch")
    # an error names the option as the user gave it, not the library's flag of that field
    for argv, message in (
        (["--student-steps", "0"], r"^--student-steps 0: must be an integer"),
        (["--expert-train-epochs", "0"], r"^--expert-train-epochs 0: must be"),
        (["--override", "experts.epochs=0"], r"^--override experts.epochs=0: must be"),
    ):
        with pytest.raises(ConfigError, match=message):
            apply_overrides(smoke(), build_parser().parse_args(argv))
    # options first, then the overrides: a later value wins
    late = build_parser().parse_args(["--iterations", "7", "--override", "distill.iterations=9"])
    assert apply_overrides(smoke(), late).distill.iterations == 9


def test_any_setting_can_be_overridden_by_path() -> None:
    config = apply_sets(
        smoke(),
        ["distill.lr_images=100", "short.train.lr=0.05", "beta_grid=[0, 0.2]", "score=forgetting"],
    )
    assert config.distill.lr_images == 100.0 and config.short.train.lr == 0.05
    assert config.beta_grid == (0.0, 0.2) and config.score == "forgetting"
    with pytest.raises(ConfigError, match="unknown setting 'lr_image'; known here: .*lr_images"):
        apply_sets(smoke(), ["distill.lr_image=1"])
    # the error names the assignment, not a flag of another command (--lr)
    with pytest.raises(
        ConfigError, match=r"^--override short.train.lr=-1: must be a number in \(0, 100\]"
    ):
        apply_sets(smoke(), ["short.train.lr=-1"])
    with pytest.raises(ConfigError, match=r"^--override distill.mode=fast: must be one of unrol"):
        apply_sets(smoke(), ["distill.lr_images=10", "distill.mode=fast"])
    # two settings that only make sense together are checked together
    coupled = apply_sets(smoke(), ["distill.min_start_epoch=3", "distill.max_start_epoch=4"])
    assert (coupled.distill.min_start_epoch, coupled.distill.max_start_epoch) == (3, 4)
    # what differs from the preset is printed, so a log never shows the preset's values only
    # retrained SeqMatch's stage experts are checked when the search is configured
    retrained = smoke().replace(methods=("selmatch", "seqmatch"), seqmatch_experts="retrained")
    with pytest.raises(ConfigError, match=r"^--override distill.stage_experts=0: must be an int"):
        apply_sets(retrained, ["distill.stage_experts=0"])
    assert apply_sets(smoke(), ["distill.stage_experts=0"]).distill.stage_experts == 0  # unused
    # the distillation holds no copy of the score (one value in the manifest and MLflow)
    assert overridden(smoke(), config) == (
        "score=forgetting, beta_grid=[0, 0.2], short.train.lr=0.05, distill.lr_images=100"
    )
    assert overridden(smoke(), smoke()) == ""


def test_a_search_cut_short_is_told_from_a_finished_one() -> None:
    """Tune's fit() returns quietly on Ctrl-C; the concave search's own stopping rule,
    replayed on the results, tells a partial β search from a finished one."""
    from types import SimpleNamespace

    config = smoke().replace(noise=0.0, top_repeats=0)
    grid = tuple(round(0.1 * i, 1) for i in range(10))
    phase = phases_module.Phase("beta", 10, grid, {})

    def result(beta: float, error: object = None) -> SimpleNamespace:
        accuracy = 0.8 - (beta - 0.4) ** 2  # concave, best at β = 0.4
        return SimpleNamespace(
            config={"beta": beta}, error=error, metrics={"val_accuracy": accuracy}
        )

    finished = [result(b) for b in (0.3, 0.4, 0.5, 0.6, 0.2, 0.7)]
    assert phases_module.search_finished(phase, config, finished)
    assert not phases_module.search_finished(phase, config, finished[:2])
    # a failed trial is not a score: the point is still wanted
    failed = [*finished[:2], result(0.5, error=RuntimeError("boom")), *finished[3:]]
    assert not phases_module.search_finished(phase, config, failed)
    # a trial cut off before Tune kept its config (Ctrl-C as it started) is no score either
    unknown = SimpleNamespace(config=None, error=None, metrics=None)
    assert phases_module.search_finished(phase, config, [*finished, unknown])
    assert not phases_module.search_finished(phase, config, [*finished[:2], unknown])


def test_an_abandoned_experiment_is_removed_from_a_folder_or_a_uri(tmp_path) -> None:
    for name in ("local", "uri"):
        experiment = tmp_path / name / "beta-ipc2"
        (experiment / "trial").mkdir(parents=True)
        (experiment / "trial" / "result.json").write_text("{}")
        phases_module._remove_experiment(
            str(experiment) if name == "local" else experiment.as_uri()
        )
        assert not experiment.exists() and (tmp_path / name).is_dir()
    phases_module._remove_experiment((tmp_path / "never-made").as_uri())  # nothing to remove


def test_resized_datasets_and_other_architectures_get_their_own_cache() -> None:
    from selmatch.training.models import build_model
    from selmatch.training.params import ParamLayout
    from selmatch_tune.flow.precompute import cache_key

    experts = smoke().experts
    assert cache_key(experts) == cache_key(experts, None)
    assert cache_key(experts, 32) != cache_key(experts) != cache_key(experts.replace(epochs=9))
    # the same settings on another architecture (e.g. the ConvNet's padding on 28x28) never
    # reuse networks of the old one
    layouts = [
        ParamLayout.of(build_model(experts.model, shape, 10))
        for shape in ((1, 28, 28), (1, 24, 24))
    ]
    assert cache_key(experts, None, layouts[0]) != cache_key(experts, None, layouts[1])
    consistency = smoke().consistency
    assert cache_key(consistency).startswith("consistency-fashion-mnist-")
    assert cache_key(consistency) != cache_key(consistency.replace(epochs=3))
    args = build_parser().parse_args(["--image-size", "64"])
    assert apply_overrides(smoke(), args).image_size == 64
    with pytest.raises(ConfigError, match="--image-size must be an integer in"):
        smoke().replace(image_size=2)


def test_a_repeat_trains_with_other_seeds(trial_spec) -> None:
    from selmatch.evaluation.evaluate import EvalConfig

    spec = trial_spec(evaluation=EvalConfig(num_seeds=2))
    assert spec.seeded().seeds == (0, 1)
    assert spec.replace(repeat=1).seeded().seeds == (2, 3)
    assert spec.replace(repeat=2).seeded().seeds == (4, 5)


def test_a_trial_spec_is_built_once_and_is_the_param_space_tune_restores(trial_spec) -> None:
    """The driver builds a trial's spec; Tune's param space is its dict (the searched leaf a
    choice); a trial rebuilds it from that dict, and a param space written before the spec
    existed (the keys it always had, the set's settings then inside ``distill``) rebuilds the
    same spec. The set a trial makes is its own; the matching settings are the search's."""
    from selmatch.distillation.distill import DistillConfig
    from selmatch.distillation.target import SetSpec
    from selmatch.evaluation.evaluate import EvalConfig
    from selmatch_tune.flow.trials import TrialSpec

    base = trial_spec(ipc=6, split_seed=3, evaluation=EvalConfig(num_seeds=1))
    spec = base.replace(beta=0.4, alpha=0.25, distill=DistillConfig(iterations=7, seed=5), repeat=1)
    assert TrialSpec.from_dict(spec.to_dict()) == spec
    old = {
        "ipc": 6,
        "beta_convention": "data-fraction",
        "score": "el2n",
        "val_fraction": 0.02,
        "split_seed": 3,
        "cpus_per_trial": 1,
        "gpus_per_trial": 0,
        "evaluation": EvalConfig(num_seeds=1).to_dict(),
        "beta": 0.4,
        "alpha": 0.25,
        "distill": {
            **SetSpec().to_dict(),
            **DistillConfig(iterations=7, seed=5).resolved(SetSpec()).to_dict(),
        },
        "repeat": 1,
    }
    assert TrialSpec.from_dict(old) == spec
    made, matching = spec.target(), spec.matching()
    assert (made.method, made.ipc, made.beta, made.alpha) == ("selmatch", 6, 0.4, 0.25)
    assert (made.beta_convention, made.score, made.subset_seed) == ("data-fraction", "el2n", 3)
    assert matching == DistillConfig(iterations=7, seed=6)  # the repeat's seed
    seq = spec.replace(
        method="seqmatch", subsets=3.0, init="random", seqmatch_experts="retrained"
    ).target()
    assert (seq.method, seq.subsets, seq.alpha, seq.init) == ("seqmatch", 3, 1.0, "window")
    assert seq.retrained
    # a K phase begun before the split kept its variant in ``distill``
    legacy = {
        **old,
        "method": "seqmatch",
        "subsets": 3,
        "distill": {**old["distill"], "seqmatch_experts": "retrained"},
    }
    assert TrialSpec.from_dict(legacy).target().retrained
    assert spec.window().beta == 0.4 and spec.window().ipc == 6


def test_a_trial_logger_pickled_by_an_older_version_still_restores() -> None:
    """Tuner.restore unpickles the callback saved with the experiment."""
    import pickle

    from selmatch_tune.results.tracking import TrialLogger

    old = TrialLogger.__new__(TrialLogger)
    old.__dict__.update(tracker=None, phase="beta", ipc=2, searched="beta")  # no `log` yet
    assert pickle.loads(pickle.dumps(old)).log is print


def test_an_imported_score_table_is_checked_against_the_data_and_split(tmp_path, fashion):
    import torch

    from selmatch.difficulty.scores import ScoreTable
    from selmatch_tune.flow.precompute import read_score_table

    experts = smoke().experts
    values = torch.rand(len(fashion.train_labels), dtype=torch.float64)
    ScoreTable({"cscore": values}, {"cscore": False}, {"dataset": "fashion-mnist"}).save(
        tmp_path / "ok"
    )
    table = read_score_table(tmp_path / "ok", fashion, experts)
    assert torch.equal(table.hardness("cscore"), -values)  # C-score: low = hard
    ScoreTable({"cscore": values}, {"cscore": False}, {"dataset": "cifar10"}).save(tmp_path / "c")
    with pytest.raises(ConfigError, match="--score-table .* is for cifar10, not fashion-mnist"):
        read_score_table(tmp_path / "c", fashion, experts)
    info = {"dataset": "fashion-mnist", "val_fraction": 0.1, "split_seed": 0}
    ScoreTable({"cscore": values}, {"cscore": False}, info).save(tmp_path / "s")
    with pytest.raises(ConfigError, match="made with --val-fraction 0.1 --split-seed 0"):
        read_score_table(tmp_path / "s", fashion, experts)
    args = build_parser().parse_args(["--score", "cscore", "--score-table", str(tmp_path)])
    assert apply_overrides(smoke(), args).score_table == str(tmp_path)


def test_a_trial_rebuilds_the_dataset_with_the_precompute_s_digest(fashion) -> None:
    """The digest a checkpoint records is hashed once, by the precompute, not in every trial;
    it is the digest of the rebuilt arrays."""
    import dataclasses

    from selmatch.data.identity import data_digest
    from selmatch_tune.flow.precompute import dataset_arrays, dataset_from_arrays

    small = dataclasses.replace(
        fashion, train_images=fashion.train_images[:100], train_labels=fashion.train_labels[:100]
    )
    rebuilt = dataset_from_arrays(dataset_arrays(small))
    assert rebuilt.__dict__["_digest"] == data_digest(small)
    fresh = dataclasses.replace(rebuilt)  # the same arrays, the digest not yet known
    assert "_digest" not in fresh.__dict__ and data_digest(fresh) == data_digest(small)


def test_the_t_plus_phase_refines_the_winner_by_one_registry_entry(smoke_run) -> None:
    """The T+ phase (off by default) added as one registry entry, its grid setting and the
    distillation trial: after the α phase, the winner's distillation at each T+ of the grid;
    the winner takes the best T+ when it beats it on validation, with that trial's set; the
    record, the table, MLflow, the curves and the cost table have it."""
    out = smoke_run[0].parent / "t-plus"
    base = smoke()
    config = base.replace(
        ipcs=(2,),
        beta_grid=(0.0,),
        alpha_grid=(1.0,),  # the winner learns: T+ changes it
        mtt_candidate=False,
        random_reference=False,
        full_eval_top=0,
        finalists=0,  # decided at the short budget: the winner is what the T+ phase made it
        max_start_epoch_grid=(1, 2),
        distill=base.distill.replace(max_start_epoch=2),
    )
    lines: list[str] = []
    (row,) = run_search(config, out, log=lines.append)
    record = SearchRecord.load(out)
    entry = record.ipcs[2]
    phase = entry.phase("max_start_epoch")
    assert phase is not None and set(phase.curve) == {1.0, 2.0} and phase.trials == 2
    assert entry.alpha is not None and phase.against is not None
    assert phase.against.val == entry.alpha.best_point.val  # what it had to beat
    taken = phase.best_point.val > phase.against.val
    assert entry.winner is not None
    assert (entry.winner.refined or {}) == ({"max_start_epoch": phase.best} if taken else {})
    assert row["max_start_epoch"] == (phase.best if taken else "")
    assert row["short_val_accuracy"] == max(phase.best_point.val, phase.against.val)
    assert row["max_start_epoch_trials"] == 2 and row["max_start_epoch_grid_size"] == 2
    # the winner's set is the trial's that made it, with its T+
    saved = SyntheticSet.load(row["set_dir"])
    assert saved.manifest["distill"]["max_start_epoch"] == (int(phase.best) if taken else 2)
    client = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("selmatch-search")
    children = client.search_runs([experiment.experiment_id], "tags.phase = 'max_start_epoch'")
    assert sorted(c.data.params["max_start_epoch"] for c in children) == ["1.0", "2.0"]
    assert any("best T+ = " in line for line in lines)
    assert (out / "max_start_epoch-ipc2.png").stat().st_size > 5000
    assert "max_start_epoch" in {row.stage for row in stage_costs(record)}
    with open(out / "best_hparams.csv") as handle:
        assert "max_start_epoch" in next(csv.reader(handle))
