import itertools
import json
import shutil

import pytest
import torch
from matching_cases import Settings

from selmatch.core.config import ConfigError, SelmatchError
from selmatch.difficulty.scores import ScoreTable
from selmatch.distillation import distill as distill_module
from selmatch.distillation.distill import (
    DistillationDivergedError,
    DistillConfig,
    distill,
    draw,
    settings_of,
)
from selmatch.sets.synthetic import SyntheticSet
from selmatch.training.experts import ExpertConfig, ExpertSet, InMemoryExperts, train_experts
from selmatch.training.models import ModelConfig

EXPERTS = ExpertConfig(
    model=ModelConfig(width=4), num_experts=2, epochs=4, per_class=40, batch_size=64
)
TINY = Settings.of(
    ipc=4,
    beta=0.5,
    alpha=0.5,
    n_student_steps=3,
    expert_epochs=1,
    max_start_epoch=2,
    syn_batch=16,
    iterations=4,
    checkpoint_every=2,
    lr_images=100.0,
)


@pytest.fixture(scope="module")
def experts(tmp_path_factory, fashion):
    directory = tmp_path_factory.mktemp("experts")
    train_experts(fashion, EXPERTS, directory, device="cpu", progress=False)
    return ExpertSet.load(directory)


@pytest.fixture(scope="module")
def hardness(experts):
    return ScoreTable.load(experts.directory).hardness("forgetting")


def run(settings, fashion, fashion_split, experts, hardness, directory, **kwargs):
    return distill(
        *settings.parts(),
        fashion,
        fashion_split,
        experts,
        hardness,
        directory,
        device="cpu",
        progress=False,
        **kwargs,
    )


@pytest.mark.slow
def test_selmatch_changes_only_the_alpha_share(
    tmp_path, fashion, fashion_split, experts, hardness
) -> None:
    result = run(TINY, fashion, fashion_split, experts, hardness, tmp_path)
    initial = fashion.normalize(fashion.train_images[result.source_indices])
    frozen, learned = ~result.distill_mask, result.distill_mask
    assert int(learned.sum()) == 2 * 10  # int(IPC·α) = 2 per class
    assert torch.equal(result.images[frozen], initial[frozen])  # bit-identical
    changed = (result.images[learned] != initial[learned]).flatten(1).any(dim=1)
    assert bool(changed.all())
    saved = SyntheticSet.load(tmp_path)
    assert settings_of(saved.manifest["distill"]) == (TINY.target, TINY.resolved())
    assert saved.manifest["window"]["beta_convention"] == "ipc-units"
    assert saved.learned_lr == pytest.approx(result.learned_lr) and saved.learned_lr > 0
    for name in ("loss.csv", "checkpoint/state.json"):
        assert (tmp_path / name).is_file(), name
    assert not (tmp_path / "grid.png").exists()  # distill() draws nothing: draw() does
    assert draw(tmp_path) == [tmp_path / "grid.png", tmp_path / "loss.png"]
    for name in ("loss.png", "grid.png"):
        assert (tmp_path / name).stat().st_size > 5000, name


def test_alpha_zero_is_selection_only(tmp_path, fashion, fashion_split, experts, hardness):
    result = run(TINY.replace(alpha=0.0), fashion, fashion_split, experts, hardness, tmp_path)
    window = run(
        TINY.replace(alpha=0.5), fashion, fashion_split, experts, hardness, tmp_path / "half"
    )
    assert result.num_distill == 0 and result.manifest["final_loss"] is None
    assert torch.equal(result.source_indices, window.source_indices)  # the same window
    assert torch.equal(
        result.images, fashion.normalize(fashion.train_images[result.source_indices])
    )


@pytest.mark.slow
def test_a_random_initialisation_learns_a_random_alpha_share(
    tmp_path, fashion, fashion_split, experts, hardness
) -> None:
    from selmatch.data import balanced_subset

    config = TINY.replace(init="random", subset_seed=7)
    result = run(config, fashion, fashion_split, experts, hardness, tmp_path)
    expected = balanced_subset(fashion.train_labels, 10, 4, seed=7, among=fashion_split.pool)
    assert torch.equal(result.source_indices, expected)  # the subset the seed names
    assert result.manifest["init"] == "random" and "window" not in result.manifest
    assert int(result.distill_mask.sum()) == 2 * 10  # int(IPC·α) per class
    assert result.distill_mask.view(10, 4).sum(dim=1).tolist() == [2] * 10
    initial = fashion.normalize(fashion.train_images[expected])
    assert torch.equal(result.images[~result.distill_mask], initial[~result.distill_mask])
    # α = 1 from the random subset of the same seed is plain MTT's start
    mtt = run(
        TINY.replace(method="mtt", alpha=1.0, subset_seed=7),
        fashion,
        fashion_split,
        experts,
        None,
        tmp_path / "mtt",
    )
    assert torch.equal(mtt.source_indices, expected)


def test_the_learnable_lr_starts_where_each_method_s_authors_start_it() -> None:
    assert TINY.resolved().lr_init == 0.001  # SelMatch's scripts
    assert TINY.replace(method="mtt", alpha=1.0).resolved().lr_init == 0.01  # MTT's
    assert Settings.of(method="seqmatch").resolved().lr_init == 0.01
    assert Settings.of(lr_init=0.05).resolved().lr_init == 0.05
    assert DistillConfig.from_dict(TINY.config.to_dict()) == TINY.config


def test_settings_written_before_the_split_read_back_as_both_parts() -> None:
    """Manifests, checkpoints and search records held one flat ``distill``: the set's keys
    are the set's spec, and an lr_init that was the method's default is the default again."""
    legacy = {**TINY.target.to_dict(), **TINY.resolved().to_dict()}
    assert settings_of(legacy) == (TINY.target, TINY.resolved())
    assert DistillConfig.from_dict(legacy) == TINY.config and TINY.config.lr_init is None
    own = {**legacy, "lr_init": 0.05}
    assert DistillConfig.from_dict(own).lr_init == 0.05  # a chosen lr stays chosen
    mtt = {**legacy, "method": "mtt", "alpha": 1.0, "lr_init": 0.01}
    assert DistillConfig.from_dict(mtt).lr_init is None


def test_mtt_updates_everything(tmp_path, fashion, fashion_split, experts) -> None:
    config = TINY.replace(method="mtt", alpha=1.0)
    result = run(config, fashion, fashion_split, experts, None, tmp_path)
    initial = fashion.normalize(fashion.train_images[result.source_indices])
    assert bool(result.distill_mask.all())
    assert bool((result.images != initial).flatten(1).any(dim=1).all())


@pytest.mark.slow
def test_matching_loss_decreases_on_a_tiny_problem(
    tmp_path, fashion, fashion_split, experts, hardness
) -> None:
    # One start epoch, no augmentation, the whole set in every batch: a fixed objective.
    config = TINY.replace(
        method="mtt",
        alpha=1.0,
        max_start_epoch=1,
        dsa_strategy="none",
        syn_batch=40,
        iterations=25,
        lr_images=1000.0,
        lr_lr=0.0,
    )
    solo_dir = tmp_path / "one-expert"  # one expert: a fixed target
    solo_dir.mkdir()
    for name in ("manifest.json", "indices.safetensors", "expert_000.safetensors"):
        shutil.copy(experts.directory / name, solo_dir / name)
    run(config, fashion, fashion_split, ExpertSet.load(solo_dir), None, tmp_path / "out")
    lines = (tmp_path / "out" / "loss.csv").read_text().split()[1:]
    losses = [float(line.split(",")[1]) for line in lines]
    assert len(losses) == 25
    assert losses[-1] < 0.95 * losses[0]
    assert sum(b < a for a, b in itertools.pairwise(losses)) >= 20


def test_seqmatch_learns_subsets_in_order(
    tmp_path, fashion, fashion_split, experts, monkeypatch
) -> None:
    snapshots = []
    real_stage = distill_module._run_stage

    def spy(run_, stage, state, generator):
        snapshots.append(("before", stage, state.images.clone()))
        real_stage(run_, stage, state, generator)
        snapshots.append(("after", stage, state.images.clone()))

    monkeypatch.setattr(distill_module, "_run_stage", spy)
    config = TINY.replace(method="seqmatch", alpha=1.0, subsets=2, max_start_epoch=3)
    result = run(config, fashion, fashion_split, experts, None, tmp_path)
    subset = torch.tensor(result.manifest["subset_ids"])
    assert torch.bincount(subset).tolist() == [20, 20]  # IPC 4 → 2 + 2 per class
    (_, s1, before1), (_, _, after1), (_, s2, before2), (_, _, after2) = snapshots
    assert set(s1.learnable.tolist()) == set(torch.nonzero(subset == 0).flatten().tolist())
    assert len(s1.frozen) == 0 and s1.start_epochs == (0, 2)
    assert set(s2.frozen.tolist()) == set(s1.learnable.tolist()) and s2.start_epochs == (2, 3)
    second = subset == 1
    assert torch.equal(after1[second], before1[second])  # stage 1 leaves S2 alone
    assert torch.equal(after2[~second], before2[~second])  # stage 2 keeps S1 frozen
    assert not torch.equal(after2[second], before2[second])


def test_segments_start_in_the_min_to_max_start_epoch_range(
    fashion, fashion_split, experts, hardness
) -> None:
    config = TINY.replace(method="mtt", alpha=1.0, min_start_epoch=1, max_start_epoch=3)
    initial = distill_module.initial_set(config.target, 0, fashion, fashion_split, None)
    (stage,) = distill_module.stages_of(config.target, config.resolved(), initial)
    assert stage.start_epochs == (1, 3)
    seq = config.replace(method="seqmatch")
    first, second = distill_module.stages_of(
        seq.target,
        seq.resolved(),
        distill_module.initial_set(seq.target, 0, fashion, fashion_split, None),
    )
    assert (first.start_epochs, second.start_epochs) == ((1, 2), (2, 3))
    # every drawn start epoch, and so every matched segment, lies in [T−, T+)
    walks = InMemoryExperts(
        experts.config, experts.layout, [torch.arange(5.0).unsqueeze(1)] * 2
    )  # parameter vector = its epoch
    run_ = distill_module._Run(
        target=config.target,
        config=config.resolved(),
        directory=None,
        template=None,
        layout=None,
        experts=walks,
        expert_ids=walks.finished,
        labels=initial.labels,
        image_size=(28, 28),
        dsa=None,
        device=torch.device("cpu"),
        progress=False,
    )
    generator = torch.Generator().manual_seed(0)
    starts = {
        int(distill_module.sample_expert_segment(run_, stage.start_epochs, generator)[0])
        for _ in range(50)
    }
    assert starts == {1, 2}
    assert (
        DistillConfig.from_dict(
            {k: v for k, v in TINY.config.to_dict().items() if k != "min_start_epoch"}
        ).min_start_epoch
        == 0
    )  # sets and checkpoints saved before T− existed load as T− = 0


def test_merge_ablation_trains_the_student_on_d_distill_alone(fashion, fashion_split, hardness):
    config = TINY.replace(merge=True)
    initial = distill_module.initial_set(config.target, 0, fashion, fashion_split, hardness)
    (stage,) = distill_module.stages_of(config.target, config.resolved(), initial)
    assert len(stage.frozen) == 0 and len(stage.learnable) == int(initial.distill_mask.sum())


@pytest.mark.slow
def test_resume_gives_the_uninterrupted_result(
    tmp_path, fashion, fashion_split, experts, hardness, monkeypatch
) -> None:
    straight = run(TINY, fashion, fashion_split, experts, hardness, tmp_path / "a")
    real = distill_module.MODES["unrolled"]
    calls = []

    def crash_on_third(*args):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # an interruption after the checkpoint at iteration 2
        return real(*args)

    monkeypatch.setitem(distill_module.MODES, "unrolled", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        run(TINY, fashion, fashion_split, experts, hardness, tmp_path / "b")
    assert json.loads((tmp_path / "b/checkpoint/state.json").read_text())["iteration"] == 2
    monkeypatch.setitem(distill_module.MODES, "unrolled", real)
    with pytest.raises(ConfigError, match="add --resume"):
        run(TINY, fashion, fashion_split, experts, hardness, tmp_path / "b")
    resumed = run(TINY, fashion, fashion_split, experts, hardness, tmp_path / "b", resume=True)
    assert torch.equal(resumed.images, straight.images)
    assert resumed.learned_lr == straight.learned_lr


def test_divergence_stops_without_writing_a_result(
    tmp_path, fashion, fashion_split, experts, hardness
) -> None:
    config = TINY.replace(lr_images=1e38, checkpoint_every=1)
    with pytest.raises(DistillationDivergedError, match="diverged at iteration"):
        run(config, fashion, fashion_split, experts, hardness, tmp_path)
    assert not (tmp_path / "set.safetensors").exists()
    if (tmp_path / "checkpoint" / "state.safetensors").exists():  # only good states are saved
        from safetensors.torch import load_file

        images = load_file(str(tmp_path / "checkpoint" / "state.safetensors"))["images"]
        assert bool(torch.isfinite(images).all())


@pytest.mark.slow
def test_resume_may_lower_the_learning_rates(
    tmp_path, fashion, fashion_split, experts, hardness
) -> None:
    """What the divergence message advises: continue from a checkpoint at a lower rate."""
    first = TINY.replace(iterations=2, checkpoint_every=1)
    run(first, fashion, fashion_split, experts, hardness, tmp_path)
    lower = first.replace(iterations=3, lr_images=first.lr_images / 10, lr_lr=first.lr_lr / 10)
    result = run(lower, fashion, fashion_split, experts, hardness, tmp_path, resume=True)
    assert json.loads((tmp_path / "checkpoint/state.json").read_text())["iteration"] == 3
    assert bool(torch.isfinite(result.images).all())
    with pytest.raises(ConfigError, match=r"other settings \(syn_batch\); only --iterations"):
        run(
            lower.replace(syn_batch=lower.syn_batch + 1),
            fashion,
            fashion_split,
            experts,
            hardness,
            tmp_path,
            resume=True,
        )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            dict(max_start_epoch=4, expert_epochs=1),
            r"--max-start-epoch \+ --expert-epochs must be ≤ 4",
        )
    ],
)
def test_settings_checked_against_the_experts(
    tmp_path, fashion, fashion_split, experts, hardness, kwargs, message
) -> None:
    with pytest.raises(ConfigError, match=message):
        run(TINY.replace(**kwargs), fashion, fashion_split, experts, hardness, tmp_path)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(alpha=1.5), r"--alpha must be a number in \[0, 1\]"),
        (dict(init="noise"), "--init must be one of window, random"),
        (dict(method="mtt", init="random"), "--init applies to --method selmatch only"),
        (dict(method="mtt", merge=True), "--merge is an ablation of --method selmatch only"),
        (dict(mode="fast"), "--memory must be one of"),
        (dict(n_student_steps=0), "--student-steps must be"),
        (dict(subsets=5, ipc=4), r"--subsets must be an integer in \[1, 4\]"),
        (dict(dsa_strategy="blur"), "--dsa-strategy must be one of"),
        (dict(min_start_epoch=2), r"--min-start-epoch must be an integer in \[0, 1\], got 2"),
        (dict(min_start_epoch=-1), r"--min-start-epoch must be an integer in \[0, 1\]"),
        (dict(iterations=0), r"--iterations must be an integer in \[1, 10000000\], got 0"),
        (dict(seed=-1), r"--seed must be an integer in \[0, 2147483647\], got -1"),
        (dict(lr_images=float("inf")), r"--lr-images must be a number in \(0, 3.40282e\+38\]"),
        (dict(lr_lr=float("inf")), r"--lr-lr must be a number in \[0, 3.40282e\+38\]"),
        (dict(lr_init=float("inf")), r"--lr-init must be a number in \(0, 3.40282e\+38\]"),
        (dict(lr_lr=float("nan")), r"--lr-lr must be a number in"),
    ],
)
def test_bad_distill_settings(kwargs, message) -> None:
    with pytest.raises(ConfigError, match=message):
        TINY.replace(**kwargs)


# --------------------------------------------------------------------------- resuming
RESUMED = TINY.replace(iterations=2, checkpoint_every=1)


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory, fashion, fashion_split, experts, hardness):
    """A finished run of ``RESUMED``: its checkpoint stands for an interrupted one's."""
    directory = tmp_path_factory.mktemp("interrupted")
    run(RESUMED, fashion, fashion_split, experts, hardness, directory)
    return directory


def _copy(interrupted, tmp_path):
    shutil.copytree(interrupted, tmp_path / "run")
    return tmp_path / "run"


def test_a_checkpoint_records_the_inputs_and_a_resume_meets_them(
    interrupted, tmp_path, fashion, fashion_split, experts, hardness
) -> None:
    from selmatch.data.identity import data_identity

    folder = _copy(interrupted, tmp_path)
    inputs = json.loads((folder / "checkpoint/state.json").read_text())["inputs"]
    assert inputs["data"] == data_identity(fashion)
    assert set(inputs) == {"data", "experts", "experts_directory", "initial"}
    resumed = run(RESUMED, fashion, fashion_split, experts, hardness, folder, resume=True)
    assert torch.equal(resumed.images, SyntheticSet.load(interrupted).images)


def test_a_resume_refuses_other_experts(
    interrupted, tmp_path, fashion, fashion_split, experts, hardness
) -> None:
    fewer = tmp_path / "one-expert"  # the same settings, but not the same finished experts
    fewer.mkdir()
    for name in ("manifest.json", "indices.safetensors", "expert_000.safetensors"):
        shutil.copy(experts.directory / name, fewer / name)
    folder = _copy(interrupted, tmp_path)
    with pytest.raises(
        ConfigError,
        match=r"distilled against other experts .* than --experts "
        r".*one-expert .*use the interrupted run's --experts",
    ):
        run(RESUMED, fashion, fashion_split, ExpertSet.load(fewer), hardness, folder, resume=True)


def test_a_resume_refuses_another_score_table(
    interrupted, tmp_path, fashion, fashion_split, experts, hardness
) -> None:
    folder = _copy(interrupted, tmp_path)
    with pytest.raises(
        ConfigError,
        match=r"started from other real images .* than --scores "
        "and --score pick now",
    ):
        run(RESUMED, fashion, fashion_split, experts, -hardness, folder, resume=True)


def test_a_resume_refuses_other_data(
    interrupted, tmp_path, fashion, fashion_split, experts, hardness
) -> None:
    from dataclasses import replace

    other = replace(fashion, test_images=fashion.test_images.flip(0))  # another --data-root
    folder = _copy(interrupted, tmp_path)
    with pytest.raises(
        ConfigError,
        match=r"^--resume: the checkpoint in .*run/checkpoint made "
        r"from fashion-mnist .*digest .*--dataset and --data-root",
    ):
        run(RESUMED, other, fashion_split, experts, hardness, folder, resume=True)


def test_a_checkpoint_written_before_inputs_were_recorded_resumes_with_a_warning(
    interrupted, tmp_path, fashion, fashion_split, experts, hardness, capsys
) -> None:
    folder = _copy(interrupted, tmp_path)
    state = json.loads((folder / "checkpoint/state.json").read_text())
    del state["inputs"], state["schema_version"]  # the shape of a checkpoint from back then
    (folder / "checkpoint/state.json").write_text(json.dumps(state))
    run(RESUMED, fashion, fashion_split, experts, -hardness, folder, resume=True)
    warning = capsys.readouterr().err.splitlines()
    assert len(warning) == 1 and "predates recorded inputs" in warning[0]


def _edit_state(folder, **changes) -> None:
    path = folder / "checkpoint/state.json"
    path.write_text(json.dumps(json.loads(path.read_text()) | changes))


def _edit_tensors(folder, **changes) -> None:
    from safetensors.torch import load_file, save_file

    path = str(folder / "checkpoint/state.safetensors")
    tensors = load_file(path) | changes
    save_file({k: v for k, v in tensors.items() if v is not None}, path)


@pytest.mark.parametrize(
    ("state", "tensors", "message"),
    [
        (dict(iteration=-1), {}, r"state.json: iteration must be an integer ≥ 0, got -1"),
        (dict(iteration="2"), {}, r"state.json: iteration must be an integer ≥ 0, got '2'"),
        (dict(iteration=3), {}, r"--iterations 2 is fewer than the 3 that --resume's"),
        (dict(stage=1), {}, r"state.json: stage must be an integer in \[0, 0\], got 1"),
        (dict(losses="none"), {}, "state.json: losses must be a list of finite numbers"),
        (dict(losses=[1.0, None]), {}, "state.json: losses must be a list of finite numbers"),
        (dict(stage_lrs=[0.1]), {}, r"state.json: stage_lrs must be 0 finite number"),
        (dict(config=None), {}, r"state.json: not a distillation checkpoint"),
        (dict(config={"ipc": "four"}), {}, r"state.json: its config is not a distillation's"),
        (
            {},
            dict(images=torch.zeros(20, 1, 28, 28)),
            r"state.safetensors: images are torch.float32 \(20, 1, 28, 28\), this set's are "
            r"float \(40, 1, 28, 28\)",
        ),
        ({}, dict(images=torch.zeros(40, 1, 28, 28, dtype=torch.uint8)), "images are torch.uint8"),
        ({}, dict(images=torch.full((40, 1, 28, 28), float("nan"))), "images hold NaN"),
        ({}, dict(syn_lr=torch.tensor([float("nan")])), "syn_lr must be one finite float > 0"),
        ({}, dict(syn_lr=torch.tensor([-0.1])), "syn_lr must be one finite float > 0"),
        ({}, dict(syn_lr=torch.zeros(0)), "syn_lr must be one finite float > 0"),
        ({}, dict(syn_lr=None), "state.safetensors: it lacks the tensor.s. syn_lr"),
        (
            {},
            dict(image_momentum=torch.zeros(40, 1, 28, 28)),
            r"image_momentum must be float "
            r"\(20, 1, 28, 28\)",
        ),
        ({}, dict(lr_momentum=torch.zeros(3)), "lr_momentum must be one finite number"),
        ({}, dict(generator_state=torch.zeros(3)), "generator_state is not a random generator"),
    ],
)
def test_a_damaged_checkpoint_is_one_line_naming_its_file(
    interrupted, tmp_path, fashion, fashion_split, experts, hardness, state, tensors, message
) -> None:
    folder = _copy(interrupted, tmp_path)
    _edit_state(folder, **state)
    _edit_tensors(folder, **tensors)
    with pytest.raises(SelmatchError, match=message) as caught:
        run(RESUMED, fashion, fashion_split, experts, hardness, folder, resume=True)
    text = str(caught.value)
    assert "\n" not in text and str(folder / "checkpoint") in text
    assert "delete" in text and "start again" in text
