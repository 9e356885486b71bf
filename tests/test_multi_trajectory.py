"""Several trajectories per iteration (``--trajectories-per-step E``): the batched computation
equals the mean of E single-trajectory ones, E = 1 is the old path, and the draws are those of
E one-trajectory iterations."""

from pathlib import Path

import pytest
import torch
from matching_cases import matching_case

from selmatch import cli
from selmatch.core.config import ConfigError
from selmatch.distillation.distill import DistillConfig, _Run, distill, sample_trajectories
from selmatch.distillation.matching import (
    MODES,
    match_trajectories,
    plan_student_steps,
    sequential_match,
)
from selmatch.distillation.target import SetSpec
from selmatch.training.augment import DSAConfig
from selmatch.training.experts import ExpertConfig, InMemoryExperts
from selmatch.training.models import ModelConfig, build_model
from selmatch.training.params import ParamLayout

D = torch.float64


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    # tiny shapes: one thread is fastest, and the file stays quick on a busy machine
    torch.set_num_threads(1)


def case(trajectories=3, norm="batch", n_frozen=9, n_learnable=11, steps=3, batch=7, seed=0):
    """E trajectories from different starts on a tiny ConvNet; the set (20) is not a multiple
    of the batch (7), so the plans hold short batches and mix frozen and learnable images."""
    return matching_case(
        trajectories=trajectories,
        dtype=D,
        n_frozen=n_frozen,
        n_learnable=n_learnable,
        steps=steps,
        batch=batch,
        shape=(1, 16, 16),
        norm=norm,
        seed=seed,
    )


def _close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-10) -> bool:
    return float((a - b).abs().max()) <= tol * float(b.abs().max())


@pytest.mark.parametrize("mode", sorted(MODES))
@pytest.mark.parametrize("norm", ["batch", "instance", "none"])
def test_batched_trajectories_equal_the_mean_of_sequential_ones(mode, norm) -> None:
    args = case(norm=norm)
    batched = match_trajectories(mode, *args)
    reference = sequential_match(mode, *args)
    assert abs(batched.loss - reference.loss) <= 1e-10 * abs(reference.loss)
    assert _close(batched.grad_learnable, reference.grad_learnable)
    assert _close(batched.grad_lr, reference.grad_lr)
    assert reference.grad_learnable.abs().sum() > 0 and reference.grad_lr.abs() > 0
    # the mean really is over different trajectories: each alone gives another gradient
    template, layout, starts, targets, synthetic, lr, plans = args
    first = MODES[mode](template, layout, starts[0], targets[0], synthetic, lr, plans[0])
    assert not _close(first.grad_learnable, reference.grad_learnable, 1e-3)


@pytest.mark.parametrize("mode", sorted(MODES))
def test_one_trajectory_is_the_old_path_bit_for_bit(mode) -> None:
    template, layout, starts, targets, synthetic, lr, plans = case(trajectories=1)
    new = match_trajectories(mode, template, layout, starts, targets, synthetic, lr, plans)
    old = MODES[mode](template, layout, starts[0], targets[0], synthetic, lr, plans[0])
    assert new.loss == old.loss
    assert torch.equal(new.grad_learnable, old.grad_learnable)
    assert torch.equal(new.grad_lr, old.grad_lr)


def test_mismatched_plans_are_refused() -> None:
    template, layout, starts, targets, synthetic, lr, plans = case(trajectories=2)
    with pytest.raises(ValueError, match="E start and target vectors"):
        match_trajectories("unrolled", template, layout, starts[:1], targets, synthetic, lr, plans)
    short = plan_student_steps(len(synthetic), 2, 7, (16, 16), None, torch.Generator())
    with pytest.raises(ValueError, match="same number of steps"):
        match_trajectories(
            "unrolled", template, layout, starts, targets, synthetic, lr, [plans[0], short]
        )


#: the set of these distillations: MTT at IPC 2
MTT = SetSpec(method="mtt", ipc=2, alpha=1.0)


def _fake_run(trajectories_per_step: int) -> _Run:
    config = DistillConfig(
        n_student_steps=3,
        expert_epochs=2,
        max_start_epoch=5,
        syn_batch=7,
        trajectories_per_step=trajectories_per_step,
    )
    walks = [torch.arange(8 * 3, dtype=torch.float32).reshape(8, 3) + 100 * i for i in range(4)]
    experts = InMemoryExperts(ExpertConfig(), ParamLayout((), ()), walks)
    labels = torch.arange(20) % 10
    return _Run(
        MTT,
        config.resolved(MTT),
        Path("unused"),
        torch.nn.Identity(),
        ParamLayout((), ()),
        experts,
        experts.finished,
        labels,
        (16, 16),
        DSAConfig(),
        torch.device("cpu"),
        False,
    )


def test_e_trajectories_draw_what_e_single_iterations_draw() -> None:
    many, one = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    starts, targets, plans = sample_trajectories(_fake_run(3), (1, 5), 20, many)
    singles = [sample_trajectories(_fake_run(1), (1, 5), 20, one) for _ in range(3)]
    assert torch.equal(starts, torch.cat([s for s, _, _ in singles]))
    assert torch.equal(targets, torch.cat([t for _, t, _ in singles]))
    assert len({tuple(s.tolist()) for s in starts}) > 1  # different experts or epochs
    for plan, (_, _, (single,)) in zip(plans, singles, strict=True):
        assert all(torch.equal(a, b) for a, b in zip(plan.batches, single.batches, strict=True))
        for a, b in zip(plan.draws, single.draws, strict=True):
            assert a is not None and b is not None and a.operations == b.operations
            assert all(torch.equal(a.params[k], b.params[k]) for k in a.params)
    assert torch.equal(many.get_state(), one.get_state())


@pytest.mark.parametrize("value", [0, -2, 2.5, True])
def test_a_bad_number_of_trajectories_is_a_one_line_error(value) -> None:
    with pytest.raises(ConfigError, match=r"--trajectories-per-step must be an integer in \[1,"):
        DistillConfig(trajectories_per_step=value)
    try:
        DistillConfig(trajectories_per_step=value)
    except ConfigError as error:
        assert "\n" not in str(error)


def test_the_command_line_refuses_a_bad_value(capsys, tmp_path) -> None:
    code = cli.main(
        ["distill", "--ipc", "5", "--trajectories-per-step", "0", "--out", str(tmp_path / "out")]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.count("\n") == 0 and "--trajectories-per-step must be an integer" in err


def test_distill_with_several_trajectories_runs_and_resumes_only_with_the_same_e(
    tmp_path, fashion, fashion_split
) -> None:
    expert_config = ExpertConfig(model=ModelConfig(width=4), num_experts=2, epochs=4)
    model = build_model(expert_config.model, fashion.image_shape, fashion.num_classes, seed=0)
    layout = ParamLayout.of(model)
    base = layout.flatten(model)
    noise = torch.Generator().manual_seed(1)
    walks = [
        base + 0.01 * torch.randn(5, layout.numel, generator=noise).cumsum(0) for _ in range(2)
    ]
    experts = InMemoryExperts(expert_config, layout, walks)
    config = DistillConfig(
        n_student_steps=2,
        expert_epochs=1,
        max_start_epoch=3,
        syn_batch=8,
        iterations=2,
        checkpoint_every=1,
        lr_images=10.0,
        trajectories_per_step=2,
    )
    result = distill(
        MTT, config, fashion, fashion_split, experts, None, tmp_path, device="cpu", progress=False
    )
    assert result.manifest["distill"]["trajectories_per_step"] == 2
    assert len((tmp_path / "loss.csv").read_text().splitlines()) == 3
    with pytest.raises(ConfigError, match="trajectories_per_step"):
        distill(
            MTT,
            config.replace(trajectories_per_step=3, iterations=3),
            fashion,
            fashion_split,
            experts,
            None,
            tmp_path,
            device="cpu",
            resume=True,
            progress=False,
        )
