"""The study's committed results carry it to a fresh machine: what `collect` keeps of a run
folder is what `restore` puts back, and the finished steps are then skipped."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def study(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location(
        "fmnist_study", ROOT / "experiments" / "fmnist_study.py"
    )
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "fmnist_study", module)  # dataclasses look it up
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "RESULTS_ROOT", tmp_path / "committed")
    monkeypatch.setattr(module, "RESULTS", tmp_path / "committed" / "fmnist-study")
    return module


def make_set(directory: Path, size: int) -> None:
    directory.mkdir(parents=True)
    (directory / "set.safetensors").write_bytes(b"x" * size)
    (directory / "manifest.json").write_text('{"experts": {"directory": "/old/cache/fm-1"}}')
    (directory / "grid.png").write_bytes(b"png")


def test_committed_results_restore_a_fresh_run_folder(study, tmp_path, capsys) -> None:
    out, search = tmp_path / "old", tmp_path / "old" / "search"
    make_set(out / "window-ipc60", 100)
    make_set(out / "distill-mtt-ipc600", 100)
    make_set(out / "distill-seqmatch-ipc600", 100)  # not evaluated
    make_set(search / "sets" / "ipc60", 100)
    (out / "checkpoint-ipc60").mkdir()  # not a set: ignored
    (out / "eval-window-ipc60.json").write_text("{}")
    (out / "eval-distill-mtt-ipc600.json").write_text("{}")
    # the search's cache: its experts and consistency networks are kept, stage experts are not
    for name in (
        "fashion-mnist-1a/expert_000.safetensors",
        "consistency-fashion-mnist-2b/n.st",
        "stage-experts/3c/expert_000.safetensors",
    ):
        (out / "cache" / name).parent.mkdir(parents=True, exist_ok=True)
        (out / "cache" / name).write_bytes(name.encode())
    state = {"config": {}, "ipcs": {"60": {"set_dir": str(search / "sets" / "ipc60")}}}
    (search / "search_state.json").write_text(json.dumps(state))
    for path, copy in study.portable(out, search, study.RESULTS).items():
        copy.parent.mkdir(parents=True, exist_ok=True)
        copy.write_bytes(path.read_bytes())
    committed = study.RESULTS
    (committed / "steps.log").write_text("window ipc60\t5 s\n")  # as collect left it
    # no set is committed itself (its step remakes it), only its pictures and manifest
    assert not list(committed.glob("**/set.safetensors"))
    assert (committed / "ipc60-sets" / "window-ipc60" / "manifest.json").exists()
    assert (committed / "ipc600-sets" / "distill-mtt-ipc600" / "grid.png").exists()

    fresh, fresh_search = tmp_path / "fresh", tmp_path / "fresh" / "search"
    study.restore(fresh, fresh_search, study.RESULTS)
    assert (fresh / "window-ipc60" / "grid.png").exists()
    assert not (fresh / "window-ipc60" / "set.safetensors").exists()
    assert (fresh_search / "sets" / "ipc60" / "manifest.json").exists()
    assert (fresh / "eval-distill-mtt-ipc600.json").exists()
    # an evaluated set kept as pictures is restored (its step is done by its evaluation), an
    # unevaluated one is not: it will be distilled again into an empty folder
    assert (fresh / "distill-mtt-ipc600" / "grid.png").exists()
    assert not (fresh / "distill-seqmatch-ipc600").exists()
    for name in ("fashion-mnist-1a/expert_000.safetensors", "consistency-fashion-mnist-2b/n.st"):
        assert (fresh / "cache" / name).read_bytes() == name.encode()  # not trained again
    assert not (fresh / "cache" / "stage-experts").exists()
    restored = json.loads((fresh_search / "search_state.json").read_text())
    assert restored["ipcs"]["60"]["set_dir"] == str(fresh_search / "sets" / "ipc60")
    # the steps' durations go on from the committed log (collect copies OUT's log over it)
    runner = study.Study(fresh, dry_run=False, stop_after=None)
    runner.run("coverage mtt", [sys.executable, "-c", "pass"])
    log = (fresh / "steps.log").read_text().splitlines()
    assert log[0] == "window ipc60\t5 s" and log[1].startswith("coverage mtt\t")

    runner = study.Study(fresh, dry_run=True, stop_after=None)
    capsys.readouterr()
    for method in ("mtt", "seqmatch"):
        study.distill_step(
            runner, method, 600, 0.5, 0.4, "experts", fresh / f"distill-{method}-ipc600"
        )
    planned = capsys.readouterr().out
    assert "distill distill-seqmatch-ipc600" in planned  # to do again
    assert "distill-mtt-ipc600" not in planned  # done: its evaluation is there
    # winners() finds the experts under the fresh folder's cache (retrained by the search)
    (fresh_search / "best_hparams.csv").write_text(
        f"ipc,beta,alpha,set_dir\n60,0.5,0.4,{fresh_search / 'sets' / 'ipc60'}\n"
    )
    assert study.winners(fresh_search)[60]["experts"] == str(fresh / "cache" / "fm-1")
    # restoring twice copies nothing again and never overwrites
    (fresh / "eval-window-ipc60.json").write_text('{"newer": 1}')
    study.restore(fresh, fresh_search, study.RESULTS)
    assert json.loads((fresh / "eval-window-ipc60.json").read_text()) == {"newer": 1}


def test_collect_keeps_earlier_rows_that_no_evaluation_file_backs(study, tmp_path) -> None:
    committed = study.RESULTS
    committed.mkdir(parents=True)
    (committed / "results.csv").write_text(
        "method,ipc,test_mean,test_std,val_mean,epochs,seeds\n"
        "random,120,0.85,0.002,0.86,98,3\n"
        "random,60,0.80,0.001,0.81,196,3\n"
    )
    out = tmp_path / "run"
    out.mkdir()
    result = {
        "test_mean": 0.83,
        "test_std": 0.003,
        "val_mean": 0.84,
        "epochs": 196,
        "seeds": [0, 1, 2],
    }
    (out / "eval-random-ipc60.json").write_text(json.dumps({"result": result}))
    study.collect(out, out / "search")
    table = (committed / "results.csv").read_text().splitlines()
    assert table[1:] == ["random,60,0.83,0.003,0.84,196,3", "random,120,0.85,0.002,0.86,98,3"]
    tables = (committed / "tables.md").read_text()
    assert "| random subset | 83.00 ± 0.30 | 85.00 ± 0.20 |" in tables


def test_plan_v2_distils_with_its_matching_settings_into_its_own_results(
    study, tmp_path, capsys
) -> None:
    v2 = study.PLANS["v2"]
    search = " ".join(study.search_command(tmp_path / "search", (60,), v2))
    assert "--expert-train-epochs 15" in search and "--lr-images 100" in search
    assert "--min-start-epoch 8 --max-start-epoch 13" in search
    # every option the study gives the search is one of its options (parsed, not run)
    from selmatch_tune.search_alpha_beta import apply_overrides, build_parser
    from selmatch_tune.settings.presets import PRESETS

    config = apply_overrides(
        PRESETS["quick"](),
        build_parser().parse_args(study.search_command(tmp_path / "search", (60,), v2)[2:]),
    )
    assert config.experts.epochs == 15 and config.distill.lr_images == 100.0
    assert config.experts.num_experts == 2 and config.distill.expert_epochs == 2
    assert "--expert-train-epochs 5" in " ".join(study.search_command(tmp_path / "search", (60,)))
    runner = study.Study(tmp_path / "run", dry_run=True, stop_after=None, plan=v2)
    study.distill_step(runner, "seqmatch", 60, 0.5, 0.4, "experts", tmp_path / "run" / "s")
    planned = capsys.readouterr().out
    assert "--lr-images 100" in planned and "--iterations 100" in planned
    assert "--max-start-epoch 3" not in planned  # v1's range does not leak into v2
    # v2 has its own results folder and MLflow experiment; v1's are untouched
    out = tmp_path / "run"
    out.mkdir()
    result = {
        "test_mean": 0.84,
        "test_std": 0.001,
        "val_mean": 0.85,
        "epochs": 196,
        "seeds": [0, 1, 2],
    }
    (out / "eval-distill-mtt-ipc60.json").write_text(json.dumps({"result": result}))
    study.collect(out, out / "search", v2)
    assert "| MTT | 84.00 ± 0.10 |" in (v2.results / "tables.md").read_text()
    assert v2.results != study.RESULTS and not study.RESULTS.exists()
    assert json.loads((v2.results / "plan.json").read_text())["experts"].startswith(
        "2 experts x 15"
    )
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    assert client.get_experiment_by_name("fmnist-study-v2") is not None
    assert client.get_experiment_by_name("fmnist-study") is None


def test_each_set_is_evaluated_as_soon_as_it_is_made(study, tmp_path, capsys) -> None:
    runner = study.Study(tmp_path / "run", dry_run=True, stop_after=None, plan=study.PLANS["v2"])
    row = {"experts": "experts", "beta": "0.4", "alpha": "0.7"}
    assert study.study_ipc(runner, 60, row)
    lines = capsys.readouterr().out.splitlines()
    steps = [line.split(":")[0].removeprefix("[study] ") for line in lines if "[study]" in line]
    assert steps == [
        "evaluate random-ipc60",
        "window ipc60",
        "evaluate window-ipc60",
        "distill distill-selmatch-ipc60",
        "evaluate distill-selmatch-ipc60",
        "distill distill-mtt-ipc60",
        "evaluate distill-mtt-ipc60",
        "distill distill-seqmatch-ipc60",
        "evaluate distill-seqmatch-ipc60",
        "evaluate ablation-dsa-ipc60",
        "distill ablation-init-ipc60",
        "evaluate ablation-init-ipc60",
        "coverage selmatch",
        "coverage mtt",
    ]
    study.study_ipc(runner, 300, row)  # the ablation and coverage are at 1 % only
    assert "ablation" not in capsys.readouterr().out


def test_the_study_names_a_bad_ipc_list_in_one_line(study, capsys) -> None:
    with pytest.raises(SystemExit):
        study.main(["--plan", "v2", "--ipcs", "120", "--dry-run"])
    assert "--ipcs must be among 60,300,600 (plan v2), got 120" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        study.main(["--ipcs", "60;120", "--dry-run"])
    assert "--ipcs must be a comma-separated list" in capsys.readouterr().err


@pytest.fixture
def probe(study, tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location(
        "budget_probe", ROOT / "experiments" / "budget_probe.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "study_module", study)
    monkeypatch.setattr(module, "RESULTS", study.RESULTS / "probe")
    return module


def test_the_probe_tables_each_variant_against_the_random_subset(probe, study, tmp_path) -> None:
    study.RESULTS.mkdir(parents=True)
    (study.RESULTS / "results.csv").write_text(
        "method,ipc,test_mean,test_std,val_mean,epochs,seeds\n"
        "distill-mtt,60,0.7869,0.0009,0.79,196,3\n"
        "random,60,0.8322,0.0033,0.84,196,3\n"
        "random,120,0.85,0.002,0.86,98,3\n"
    )
    out = tmp_path / "probe-run"
    out.mkdir()
    result = {
        "test_mean": 0.8012,
        "test_std": 0.002,
        "val_mean": 0.81,
        "epochs": 196,
        "seeds": [0, 1, 2],
    }
    (out / "eval-mtt-e5-lr100-it200-ipc60.json").write_text(json.dumps({"result": result}))
    (out / "mtt-e5-lr100-it200-ipc60").mkdir()
    (out / "mtt-e5-lr100-it200-ipc60" / "grid.png").write_bytes(b"png")
    probe.collect(out)
    lines = (probe.RESULTS / "tables.md").read_text().splitlines()
    assert lines[2].startswith("| random subset") and "83.22 ± 0.33 | +0.00 |" in lines[2]
    assert lines[3].startswith("| MTT, the study's") and "78.69 ± 0.09 | -4.53 |" in lines[3]
    assert lines[4] == "| pixel lr 100 (not 1000) | 80.12 ± 0.20 | -3.10 |"
    assert len(lines) == 5  # the study's IPC 120 row is not the probe's
    assert (probe.RESULTS / "mtt-e5-lr100-it200-ipc60-grid.png").read_bytes() == b"png"
    assert (probe.RESULTS / "eval-mtt-e5-lr100-it200-ipc60.json").exists()
    # logged to MLflow once, however often collect runs
    probe.collect(out)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("fmnist-budget-probe")
    runs = client.search_runs([experiment.experiment_id])
    assert [r.data.tags["set"] for r in runs] == ["mtt-e5-lr100-it200-ipc60"]
    assert runs[0].data.metrics["test_mean"] == pytest.approx(0.8012)


def test_the_probe_plans_its_steps_and_waits_for_the_run_it_resumes(probe, tmp_path, capsys):
    runner = probe.Study(tmp_path / "plan", dry_run=True, stop_after=None)
    (tmp_path / "plan").mkdir()
    assert probe.probe_step(runner, "mtt-e5-it200")
    planned = capsys.readouterr().out
    assert "experts e5" in planned and "--epochs 5" in planned
    assert "distill mtt-e5-it200-ipc60" in planned and "--lr-images" not in planned
    assert probe.probe_step(runner, "mtt-e15-T10-it200")
    planned = capsys.readouterr().out
    assert "--epochs 15" in planned
    # the probe's option follows the study's: the CLI keeps the last value of a repeated option
    assert planned.index("--max-start-epoch 3") < planned.index("--max-start-epoch 10")
    assert not probe.probe_step(runner, "mtt-e5-it600")  # its base set is not there yet
    # a SelMatch probe distils at the β*, α* the study's search chose for IPC 60
    probe.study_module.RESULTS.mkdir(parents=True)
    (probe.study_module.RESULTS / "best_hparams.csv").write_text("ipc,beta,alpha\n60,0.5,0.4\n")
    assert probe.probe_step(runner, "selmatch-e15-late-lr100-it200")
    planned = capsys.readouterr().out
    assert "--method selmatch" in planned and "--beta 0.5" in planned and "--alpha 0.4" in planned


def test_the_probe_command_line_plans_its_steps_and_names_a_bad_ipc(probe, tmp_path, capsys):
    out = str(tmp_path / "probe")
    assert probe.main(["--out", out, "--probes", "mtt-e5-it200", "--dry-run"]) == 0
    assert "distill mtt-e5-it200-ipc60" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        probe.main(["--out", out, "--ipc", "61", "--dry-run"])
    assert "--ipc: invalid choice: 61" in capsys.readouterr().err


def test_plan_v3_ranks_by_consistency_and_starts_selmatch_where_the_search_said(
    study, tmp_path, capsys
) -> None:
    v3 = study.PLANS["v3"]
    command = " ".join(study.search_command(tmp_path / "search", (60,), v3))
    assert "--score consistency" in command and "consistency.epochs=6" in command
    assert "consistency.per_class=null" in command and "--lr-images 100" in command
    assert "--alpha-grid 0,0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,1" in command  # tenths, with 0
    runner = study.Study(tmp_path / "run", dry_run=True, stop_after=None, plan=v3)
    row = {
        "experts": "experts",
        "scores": "consistency-dir",
        "beta": "0.4",
        "alpha": "0.5",
        "init": "random",
    }
    assert study.study_ipc(runner, 300, row)
    lines = [line for line in capsys.readouterr().out.splitlines() if "[study]" in line]
    selmatch = next(line for line in lines if "distill distill-selmatch" in line)
    assert "--init random --subset-seed 0" in selmatch
    assert "--scores consistency-dir --score consistency" in selmatch
    mtt = next(line for line in lines if "distill distill-mtt" in line)
    assert "--init" not in mtt  # only SelMatch follows the search's initialisation
    window = next(line for line in lines if "window ipc300" in line)
    assert "--score consistency" in window  # the oracle window is the window at β* still
    # issue 21: SeqMatch with retrained stage experts, and both variants in sequential order
    retrained = next(line for line in lines if "distill distill-seqmatch-retrained" in line)
    assert "--method seqmatch" in retrained and "--seqmatch-experts retrained" in retrained
    assert "--stage-experts 2" in retrained and "--stage-cache" in retrained
    sequential = [line for line in lines if "--eval-order sequential" in line]
    assert [line.split()[2].rstrip(":") for line in sequential] == [
        "distill-seqmatch-retrained-sequential-ipc300",
        "distill-seqmatch-sequential-ipc300",
    ]


def test_a_segment_set_without_per_stage_lrs_is_distilled_again_for_its_sequential_row(
    study, tmp_path, capsys
) -> None:
    runner = study.Study(tmp_path / "run", dry_run=True, stop_after=None, plan=study.PLANS["v3"])
    segment = tmp_path / "run" / "distill-seqmatch-ipc60"
    segment.mkdir(parents=True)
    (segment / "manifest.json").write_text('{"method": "seqmatch"}')  # an earlier version's
    assert study.seqmatch_variants(runner, 60, "experts", "scores", segment)
    lines = [line for line in capsys.readouterr().out.splitlines() if "[study]" in line]
    assert any("distill distill-seqmatch-staged-ipc60" in line for line in lines)
    sequential = next(line for line in lines if "evaluate distill-seqmatch-sequential" in line)
    assert "distill-seqmatch-staged-ipc60 --eval-order sequential" in sequential
    (segment / "manifest.json").write_text('{"method": "seqmatch", "stage_lrs": [0.01, 0.02]}')
    assert study.seqmatch_variants(runner, 60, "experts", "scores", segment)
    lines = [line for line in capsys.readouterr().out.splitlines() if "[study]" in line]
    assert not any("staged" in line for line in lines)
    assert any(f"--set {segment} --eval-order sequential" in line for line in lines)


def test_an_evaluated_set_is_distilled_again_while_a_later_step_needs_it(
    study, tmp_path, capsys
) -> None:
    """Sets are not committed: a restored set whose evaluation is done counts as made only
    when the later steps that read it (here the coverage at 1 %) are done too."""
    out = tmp_path / "run"
    runner = study.Study(out, dry_run=True, stop_after=None, plan=study.PLANS["v3"])
    out.mkdir()
    (out / "eval-distill-mtt-ipc60.json").write_text("{}")
    later = study.readers(runner, 60, "mtt")
    assert later == (out / "coverage-mtt-ipc60.json",)
    study.distill_step(
        runner, "mtt", 60, 0.5, 1.0, "experts", out / "distill-mtt-ipc60", later=later
    )
    assert "distill distill-mtt-ipc60" in capsys.readouterr().out  # the coverage needs it
    (out / "coverage-mtt-ipc60.json").write_text("{}")
    study.distill_step(
        runner, "mtt", 60, 0.5, 1.0, "experts", out / "distill-mtt-ipc60", later=later
    )
    assert "distill-mtt-ipc60" not in capsys.readouterr().out
    assert study.readers(runner, 300, "mtt") == ()  # no coverage at 5 %
    assert study.readers(runner, 300, "seqmatch") == (
        out / "eval-distill-seqmatch-sequential-ipc300.json",
    )


def test_no_restore_leaves_the_run_folder_as_it_is(study, tmp_path, monkeypatch) -> None:
    restored = []
    monkeypatch.setattr(study, "restore", lambda *args: restored.append(args))
    monkeypatch.setattr(study.Study, "run", lambda self, name, command, *done: False)
    out = tmp_path / "run"
    assert study.main(["--plan", "v3", "--out", str(out), "--no-restore"]) == 0
    assert restored == []
    assert study.main(["--plan", "v3", "--out", str(out)]) == 0
    assert len(restored) == 1
