"""SeqMatch as its authors' code runs it: retrained stage experts, their cache, resume at a stage
boundary, and sequential evaluation (real Fashion-MNIST, tiny networks, a few steps each)."""

import json
from dataclasses import replace

import pytest
import torch
from matching_cases import Settings

from selmatch.cli import main
from selmatch.core.config import ConfigError
from selmatch.data import balanced_subset
from selmatch.distillation import distill as distill_module
from selmatch.distillation import seqmatch
from selmatch.distillation.distill import DistillConfig, distill, settings_of
from selmatch.distillation.seqmatch import (
    EarlierSubsets,
    cached_stage_experts,
    stage_expert_config,
    stage_key,
    train_stage_expert,
)
from selmatch.evaluation.evaluate import EvalConfig, evaluate_sequential
from selmatch.sets.synthetic import SyntheticSet
from selmatch.training.experts import (
    ExpertConfig,
    ExpertSet,
    expert_training_indices,
    train_experts,
)
from selmatch.training.models import ModelConfig, build_model
from selmatch.training.params import ParamLayout
from selmatch.training.train import TrainConfig, accuracy, train_network

CPU = torch.device("cpu")
EXPERTS = ExpertConfig(
    model=ModelConfig(width=4), num_experts=2, epochs=4, per_class=40, batch_size=64
)
SEQ = Settings.of(
    method="seqmatch",
    ipc=4,
    alpha=1.0,
    subsets=2,
    seqmatch_experts="retrained",
    stage_experts=2,
    stage_prefix_epochs=3,
    n_student_steps=3,
    expert_epochs=1,
    max_start_epoch=2,
    syn_batch=16,
    iterations=3,
    checkpoint_every=2,
    lr_images=100.0,
)


@pytest.fixture(scope="module")
def experts(tmp_path_factory, fashion):
    directory = tmp_path_factory.mktemp("experts")
    train_experts(fashion, EXPERTS, directory, device="cpu", progress=False)
    return ExpertSet.load(directory)


def subsets(fashion, fashion_split, per_subset=(2, 2), lrs=(0.02, 0.01)) -> EarlierSubsets:
    """Real images as frozen subsets S_1, S_2, ... (``per_subset`` images per class each)."""
    chosen = balanced_subset(
        fashion.train_labels, 10, sum(per_subset), seed=3, among=fashion_split.pool
    )
    position = torch.arange(len(chosen)) % sum(per_subset)
    ids = torch.bucketize(position, torch.tensor(per_subset).cumsum(0), right=True)
    images = fashion.normalize(fashion.train_images[chosen])
    return EarlierSubsets(images, fashion.train_labels[chosen], ids, lrs)


@pytest.mark.slow
def test_a_stage_expert_starts_where_the_earlier_subsets_lead(fashion, fashion_split) -> None:
    earlier = subsets(fashion, fashion_split)
    config = stage_expert_config(EXPERTS, num_experts=1, epochs=2)
    train_indices, _ = expert_training_indices(fashion, config)
    tensors, seconds, _ = train_stage_expert(
        fashion, config, 1, train_indices, earlier, 3, device=CPU
    )
    # the same training written out: S1 with S1's lr, then S1 ∪ S2 with S2's, 3 epochs each
    model = build_model(config.model, fashion.image_shape, 10, seed=config.seed + 1)
    untrained = ParamLayout.of(model).flatten(model).clone()
    settings = TrainConfig(
        epochs=3, batch_size=64, momentum=0.0, weight_decay=0.0, schedule="constant", augment="dsa"
    )
    for rows, lr in ((earlier.subset_ids == 0, 0.02), (earlier.subset_ids <= 1, 0.01)):
        train_network(
            model,
            earlier.images[rows],
            earlier.labels[rows],
            replace(settings, lr=lr),
            seed=config.seed + 1,
            device=CPU,
        )
    assert torch.equal(tensors["epoch_0000"], ParamLayout.of(model).flatten(model))
    assert not torch.equal(tensors["epoch_0000"], untrained)
    assert sorted(tensors) == ["epoch_0000", "epoch_0001", "epoch_0002"]  # no scores
    assert len(seconds) == 2


def test_the_cache_key_follows_the_earlier_subsets_and_the_settings(fashion, fashion_split):
    earlier = subsets(fashion, fashion_split)
    config = stage_expert_config(EXPERTS, 2, 2)
    key = stage_key(config, earlier, 3)
    same = EarlierSubsets(
        earlier.images.clone(),
        earlier.labels.clone(),
        earlier.subset_ids.clone(),
        tuple(earlier.lrs),
    )
    assert stage_key(config, same, 3) == key
    assert stage_key(stage_expert_config(EXPERTS, 5, 2), earlier, 3) == key  # more experts
    pixel = earlier.images.clone()
    pixel[0, 0, 0, 0] += 1e-3
    labels = earlier.labels.clone()
    labels[0] = (labels[0] + 1) % 10
    changed = [
        replace(earlier, images=pixel),
        replace(earlier, labels=labels),
        replace(earlier, lrs=(0.02, 0.011)),
        replace(earlier, subset_ids=1 - earlier.subset_ids),
    ]
    assert all(stage_key(config, other, 3) != key for other in changed)
    assert stage_key(config, earlier, 4) != key
    assert stage_key(stage_expert_config(EXPERTS.replace(lr=0.02), 2, 2), earlier, 3) != key


def test_stage_experts_are_reused_from_the_cache_and_retrained_for_a_changed_s1(
    tmp_path, fashion, fashion_split, monkeypatch
) -> None:
    earlier = subsets(fashion, fashion_split, per_subset=(2,), lrs=(0.02,))
    config = stage_expert_config(EXPERTS, 1, 2)
    first = cached_stage_experts(fashion, config, earlier, 2, tmp_path, device=CPU, progress=False)
    assert first.directory.name == stage_key(config, earlier, 2) and first.finished == [0]
    stage = json.loads((first.directory / "stage.json").read_text())
    assert stage["earlier_lrs"] == [0.02] and stage["earlier_sizes"] == [20]

    def fail(*args, **kwargs):
        raise AssertionError("trained again")

    monkeypatch.setattr(seqmatch, "train_stage_expert", fail)
    again = cached_stage_experts(fashion, config, earlier, 2, tmp_path, device=CPU, progress=False)
    assert torch.equal(again.trajectory(0), first.trajectory(0))
    with pytest.raises(AssertionError, match="trained again"):
        cached_stage_experts(
            fashion, config, replace(earlier, lrs=(0.03,)), 2, tmp_path, device=CPU, progress=False
        )


def run(settings, fashion, fashion_split, experts, directory, **kwargs):
    return distill(
        *settings.parts(),
        fashion,
        fashion_split,
        experts,
        None,
        directory,
        device="cpu",
        progress=False,
        **kwargs,
    )


def test_retrained_stages_match_the_start_of_their_own_experts(fashion, fashion_split) -> None:
    initial = distill_module.initial_set(SEQ.target, 0, fashion, fashion_split, None)
    first, last = distill_module.stages_of(SEQ.target, SEQ.resolved(), initial)
    assert (first.start_epochs, last.start_epochs) == ((0, 2), (0, 1))  # last: the first half
    three = SEQ.replace(subsets=3, max_start_epoch=3, stage_expert_epochs=3)
    windows = [
        s.start_epochs
        for s in distill_module.stages_of(
            three.target,
            three.resolved(),
            distill_module.initial_set(three.target, 0, fashion, fashion_split, None),
        )
    ]
    assert windows == [(0, 3), (0, 3), (0, 2)]  # the middle stage clipped to 3 − M + 1


def test_resume_at_a_stage_boundary_gives_the_uninterrupted_set(
    tmp_path, fashion, fashion_split, experts, monkeypatch
):
    straight = run(SEQ, fashion, fashion_split, experts, tmp_path / "a")
    assert straight.manifest["seqmatch_experts"] == "retrained"
    assert len(straight.manifest["stage_lrs"]) == 2
    (folder,) = straight.manifest["stage_expert_folders"]
    assert folder.startswith(str((tmp_path / "a" / "stage-experts").resolve()))
    assert ExpertSet.load(folder).finished == [0, 1]
    real, calls = distill_module.MODES["unrolled"], []

    def crash_in_stage_two(*args):
        calls.append(1)
        if len(calls) == SEQ.iterations + 1:  # stage 2's first iteration
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setitem(distill_module.MODES, "unrolled", crash_in_stage_two)
    with pytest.raises(KeyboardInterrupt):
        run(SEQ, fashion, fashion_split, experts, tmp_path / "b")
    state = json.loads((tmp_path / "b/checkpoint/state.json").read_text())
    assert (state["stage"], state["iteration"]) == (1, 0)
    assert state["stage_lrs"] == straight.manifest["stage_lrs"][:1]
    from safetensors.torch import load_file

    restarted = load_file(str(tmp_path / "b/checkpoint/state.safetensors"))["syn_lr"]
    assert float(restarted) == pytest.approx(SEQ.resolved().initial_lr)  # η restarts each stage
    monkeypatch.setitem(distill_module.MODES, "unrolled", real)
    resumed = run(SEQ, fashion, fashion_split, experts, tmp_path / "b", resume=True)
    assert torch.equal(resumed.images, straight.images)
    assert resumed.manifest["stage_lrs"] == straight.manifest["stage_lrs"]
    assert resumed.learned_lr == straight.learned_lr


def test_sequential_evaluation_is_the_hand_chained_training(fashion, fashion_split) -> None:
    earlier = subsets(fashion, fashion_split)
    mask = torch.arange(40) % 2 == 0  # a D_select part: combined augmentation applies
    train = TrainConfig(epochs=4, batch_size=16, augment="combined")
    config = EvalConfig(model=ModelConfig(width=4), train=train, num_seeds=1, seed=5, device="cpu")
    result = evaluate_sequential(
        earlier.images,
        earlier.labels,
        earlier.subset_ids,
        (0.03, 0.01),
        fashion,
        config,
        split=fashion_split,
        dsa_mask=mask,
    )
    model = build_model(config.model, fashion.image_shape, 10, seed=5)
    # equal steps per stage: 4 epochs over 40 images = 2 × (the steps of 2 epochs over 40)
    for rows, epochs, lr in (
        (earlier.subset_ids == 0, 4, 0.03),
        (earlier.subset_ids <= 1, 2, 0.01),
    ):
        train_network(
            model,
            earlier.images[rows],
            earlier.labels[rows],
            replace(train, epochs=epochs, lr=lr),
            seed=5,
            device=CPU,
            normalize=fashion.normalize,
            dsa_mask=mask[rows],
        )
    test = accuracy(
        model, fashion.test_images, fashion.test_labels, device=CPU, normalize=fashion.normalize
    )
    assert result.test_accuracy == (test,)
    assert (result.eval_order, result.stage_epochs, result.epochs) == ("sequential", (4, 2), 4)
    assert result.to_dict()["eval_order"] == "sequential"
    assert "sequential order (epochs per step 4 + 2)" in result.summary()


@pytest.mark.slow
def test_the_cli_says_which_order_evaluated_a_seqmatch_set(
    tmp_path, fashion, fashion_split, capsys
) -> None:
    earlier = subsets(fashion, fashion_split)
    SyntheticSet(
        images=earlier.images,
        labels=earlier.labels,
        distill_mask=torch.ones(40, dtype=torch.bool),
        learned_lr=0.01,
        manifest={
            "dataset": fashion.name,
            "mean": list(fashion.mean),
            "std": list(fashion.std),
            "num_classes": 10,
            "ipc": 4,
            "method": "seqmatch",
            "subset_ids": earlier.subset_ids.tolist(),
            "stage_lrs": [0.03, 0.01],
        },
    ).save(tmp_path / "set")
    common = [
        "evaluate",
        "--set",
        str(tmp_path / "set"),
        "--width",
        "4",
        "--epochs",
        "2",
        "--seeds",
        "1",
        "--no-progress",
    ]
    for order in ("union", "sequential"):
        assert main([*common, "--eval-order", order, "--out", str(tmp_path / f"{order}.json")]) == 0
        result = json.loads((tmp_path / f"{order}.json").read_text())["result"]
        assert result["eval_order"] == order
        assert f"{order} order" in capsys.readouterr().out
    assert result["stage_epochs"] == [2, 1]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(seqmatch_experts="full"), "--seqmatch-experts must be one of segment, retrained"),
        (dict(method="mtt"), "--seqmatch-experts retrained applies to --method seqmatch only"),
        (dict(stage_experts=0), r"--stage-experts must be an integer in \[1, 10000\], got 0"),
        (dict(stage_prefix_epochs=0), r"--stage-prefix-epochs must be an integer in \[1,"),
        (dict(stage_expert_epochs=0), r"--stage-expert-epochs must be an integer in \[1, 10000\]"),
    ],
)
def test_bad_retrained_settings(kwargs, message) -> None:
    with pytest.raises(ConfigError, match=message):
        SEQ.replace(**kwargs).resolved()


def test_the_stage_expert_epochs_default_to_what_the_start_window_needs() -> None:
    resolved = SEQ.resolved()
    assert resolved.stage_expert_epochs == SEQ.max_start_epoch + SEQ.expert_epochs
    segment = SEQ.replace(seqmatch_experts="segment", stage_expert_epochs=None)
    assert segment.resolved().stage_expert_epochs is None
    assert DistillConfig.from_dict(resolved.to_dict()) == resolved
    assert settings_of({**SEQ.target.to_dict(), **resolved.to_dict()}) == (SEQ.target, resolved)
