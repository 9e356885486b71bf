"""Speed levers of the student step (selmatch.distillation.levers): each runs on CPU on tiny shapes,
gives the default's result (bit for bit, or within a stated tolerance), and is refused with a
one-line error where it cannot apply."""

import pytest
import torch
from matching_cases import matching_case

from selmatch import cli
from selmatch.core.config import ConfigError
from selmatch.distillation.distill import DistillConfig, distill
from selmatch.distillation.levers import PRECISIONS, Levers, StudentStep, precision_scope
from selmatch.distillation.matching import MODES, match_trajectories
from selmatch.distillation.target import SetSpec
from selmatch.training.experts import ExpertConfig, InMemoryExperts
from selmatch.training.models import ModelConfig, build_model
from selmatch.training.params import ParamLayout


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def case(
    trajectories=1,
    dtype=torch.float64,
    n_frozen=6,
    n_learnable=6,
    steps=3,
    batch=4,
    width=4,
    depth=2,
    seed=0,
):
    """A tiny ConvNet (BatchNorm) on 3×8×8 images; the set (12) is a multiple of the batch (4),
    so every step has the same shape, and batches mix frozen and learnable images."""
    return matching_case(
        trajectories=trajectories,
        dtype=dtype,
        n_frozen=n_frozen,
        n_learnable=n_learnable,
        steps=steps,
        batch=batch,
        shape=(3, 8, 8),
        width=width,
        depth=depth,
        seed=seed,
    )


def run(mode, args, levers=None, step=None):
    template, layout = args[0], args[1]
    if levers is not None:
        step = StudentStep(template, layout, levers)
    return match_trajectories(mode, *args, step)


def rel(a, b) -> float:
    if isinstance(a, float):
        return abs(a - b) / abs(b)
    return float((a - b).norm() / b.norm())


def differences(result, reference) -> tuple[float, float, float]:
    return (
        rel(result.loss, reference.loss),
        rel(result.grad_learnable, reference.grad_learnable),
        rel(result.grad_lr, reference.grad_lr),
    )


def equal(result, reference) -> bool:
    return (
        result.loss == reference.loss
        and torch.equal(result.grad_learnable, reference.grad_learnable)
        and torch.equal(result.grad_lr, reference.grad_lr)
    )


@pytest.mark.parametrize("mode", sorted(MODES))
@pytest.mark.parametrize("trajectories", [1, 2])
def test_the_levered_path_with_every_lever_off_is_the_plain_path_bit_for_bit(
    mode, trajectories
) -> None:
    args = case(trajectories, dtype=torch.float32)
    assert equal(run(mode, args, Levers()), run(mode, args))


@pytest.mark.parametrize("precision", ["fp32", "tf32"])
@pytest.mark.parametrize("mode", sorted(MODES))
def test_fp32_and_tf32_change_nothing_on_cpu_and_restore_the_settings(mode, precision) -> None:
    args = case(dtype=torch.float32)
    before = torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision
    assert equal(run(mode, args, Levers(precision=precision)), run(mode, args))
    after = torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision
    assert after == before


def test_the_precision_scope_sets_cuda_float32_precision_for_its_duration() -> None:
    matmul, conv = torch.backends.cuda.matmul, torch.backends.cudnn.conv
    before = matmul.fp32_precision, conv.fp32_precision
    with precision_scope("fp32"):
        assert (matmul.fp32_precision, conv.fp32_precision) == ("ieee", "ieee")
    with precision_scope("tf32"):
        assert (matmul.fp32_precision, conv.fp32_precision) == ("tf32", "tf32")
    with precision_scope("bf16"):
        assert (matmul.fp32_precision, conv.fp32_precision) == before
    assert (matmul.fp32_precision, conv.fp32_precision) == before


@pytest.mark.parametrize("mode", sorted(MODES))
def test_channels_last_equals_the_default(mode) -> None:
    args = case()  # float64: a layout change moves only the summation order
    assert max(differences(run(mode, args, Levers(channels_last=True)), run(mode, args))) < 1e-12
    args32 = case(dtype=torch.float32)
    levered, default = run(mode, args32, Levers(channels_last=True)), run(mode, args32)
    assert max(differences(levered, default)) < 1e-5  # docs/distillation.md: ~1e-7 measured


def test_channels_last_with_several_trajectories_is_refused() -> None:
    with pytest.raises(ConfigError, match="--channels-last applies to --trajectories-per-step 1"):
        run("unrolled", case(trajectories=2), Levers(channels_last=True))
    with pytest.raises(ConfigError, match="--channels-last applies to --trajectories-per-step 1"):
        DistillConfig(channels_last=True, trajectories_per_step=2)


@pytest.mark.parametrize("mode", sorted(MODES))
def test_bf16_autocast_error_against_float32_is_what_the_docs_say(mode) -> None:
    """docs/distillation.md: on CPU bf16 moves the matching loss by about 1e-4 and the image
    gradient by a few percent: outside the 1e-3 the issue allows, so it stays off."""
    args = case(dtype=torch.float32, width=8)
    levered, default = run(mode, args, Levers(precision="bf16")), run(mode, args)
    loss_error, image_error, lr_error = differences(levered, default)
    assert levered.grad_learnable.dtype == torch.float32
    assert loss_error < 3e-3
    assert 1e-3 < image_error < 0.3
    assert lr_error < 0.3


def test_compile_equals_the_default_in_both_modes() -> None:
    """torch.compile of the step's gradient (torch.func.grad, inductor on CPU) gives the
    default's loss and gradients to rounding; one StudentStep serves both modes."""
    torch._dynamo.reset()
    args = case()
    step = StudentStep(args[0], args[1], Levers(compile=True))
    for mode in sorted(MODES):
        assert max(differences(run(mode, args, step=step), run(mode, args))) < 1e-10, mode


def test_compiling_the_loss_alone_cannot_be_differentiated_twice() -> None:
    """Why the lever compiles the gradient function: a compiled loss refuses the double
    backward trajectory matching needs (pytorch/pytorch#91469, #183603)."""
    torch._dynamo.reset()
    x = torch.randn(4, requires_grad=True)
    compiled = torch.compile(lambda v: (v**3).sum(), backend="aot_eager")
    (grad,) = torch.autograd.grad(compiled(x), x, create_graph=True)
    with pytest.raises(RuntimeError, match="double backward"):
        torch.autograd.grad(grad.sum(), x)


def walk_experts(fashion) -> InMemoryExperts:
    """One expert of a width-4 ConvNet whose trajectory is a random walk from its start."""
    expert_config = ExpertConfig(model=ModelConfig(width=4), num_experts=1, epochs=3)
    model = build_model(expert_config.model, fashion.image_shape, fashion.num_classes, seed=0)
    layout = ParamLayout.of(model)
    walk = layout.flatten(model) + 0.01 * torch.randn(4, layout.numel).cumsum(0)
    return InMemoryExperts(expert_config, layout, [walk])


#: the set of the levered distillations: MTT at IPC 2
MTT = SetSpec(method="mtt", ipc=2, alpha=1.0)


def test_cuda_graphs_on_cpu_is_a_one_line_error(tmp_path, fashion, fashion_split) -> None:
    with pytest.raises(ConfigError, match="--cuda-graphs needs a CUDA device; this run is on cpu"):
        Levers(cuda_graphs=True).check_device(torch.device("cpu"))
    experts = walk_experts(fashion)
    config = DistillConfig(
        n_student_steps=1,
        expert_epochs=1,
        max_start_epoch=2,
        syn_batch=5,
        iterations=1,
        cuda_graphs=True,
    )
    with pytest.raises(ConfigError, match="--cuda-graphs needs a CUDA device"):
        distill(
            MTT,
            config,
            fashion,
            fashion_split,
            experts,
            None,
            tmp_path,
            device="cpu",
            progress=False,
        )
    assert not any(tmp_path.iterdir())  # refused before anything was written


def test_levered_distillation_runs_and_records_its_levers(tmp_path, fashion, fashion_split):
    experts = walk_experts(fashion)
    config = DistillConfig(
        n_student_steps=2,
        expert_epochs=1,
        max_start_epoch=2,
        syn_batch=5,
        iterations=2,
        lr_images=10.0,
        channels_last=True,
        precision="tf32",
    )
    levered = distill(
        MTT,
        config,
        fashion,
        fashion_split,
        experts,
        None,
        tmp_path / "levered",
        device="cpu",
        progress=False,
    )
    plain = distill(
        MTT,
        config.replace(channels_last=False, precision="default"),
        fashion,
        fashion_split,
        experts,
        None,
        tmp_path / "plain",
        device="cpu",
        progress=False,
    )
    assert levered.manifest["distill"]["channels_last"] is True
    assert levered.manifest["distill"]["precision"] == "tf32"
    assert rel(levered.images, plain.images) < 1e-5


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"precision": "fp16"}, "--precision must be one of default, fp32, tf32, bf16; got 'fp16'"),
        ({"compile": 1}, "--compile must be true or false, got 1"),
        ({"cuda_graphs": "yes"}, "--cuda-graphs must be true or false, got 'yes'"),
        ({"channels_last": None}, "--channels-last must be true or false, got None"),
    ],
)
def test_bad_lever_settings_are_one_line_errors(settings, message) -> None:
    with pytest.raises(ConfigError) as error:
        DistillConfig(**settings)
    assert str(error.value) == message


def test_the_command_line_takes_the_levers_and_refuses_a_bad_precision(capsys, tmp_path):
    parser = cli.build_parser()
    args = parser.parse_args(
        [
            "distill",
            "--ipc",
            "2",
            "--compile",
            "--cuda-graphs",
            "--precision",
            "bf16",
            "--channels-last",
        ]
    )
    assert (args.compile, args.cuda_graphs, args.precision, args.channels_last) == (
        True,
        True,
        "bf16",
        True,
    )
    with pytest.raises(SystemExit) as exit_code:
        cli.main(["distill", "--ipc", "2", "--precision", "fp16", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert exit_code.value.code == 2 and err.count("\n") == 0
    assert "--precision" in err and all(p in err for p in PRECISIONS)
    help_text = parser._subparsers._group_actions[0].choices["distill"].format_help()
    for option in ("--compile", "--cuda-graphs", "--precision", "--channels-last"):
        assert option in help_text


def test_the_search_reaches_the_levers_by_set() -> None:
    from selmatch_tune.search_alpha_beta import apply_sets
    from selmatch_tune.settings.presets import smoke

    config = apply_sets(
        smoke(),
        [
            "distill.compile=true",
            "distill.precision=tf32",
            "distill.channels_last=true",
            "distill.cuda_graphs=false",
        ],
    )
    assert config.distill.levers == Levers(compile=True, precision="tf32", channels_last=True)
    with pytest.raises(ConfigError, match="--override distill.precision=fp16: must be one of"):
        apply_sets(smoke(), ["distill.precision=fp16"])
    with pytest.raises(ConfigError, match="--override distill.compile=yes: must be true or false"):
        apply_sets(smoke(), ["distill.compile=yes"])


@pytest.mark.parametrize(
    ("settings", "device", "expected"),
    [
        ({}, "cuda", Levers(compile=True, cuda_graphs=True)),
        ({"precision": "fp32"}, "cuda", Levers(compile=True, cuda_graphs=True, precision="fp32")),
        ({}, "cpu", Levers()),
        ({"trajectories_per_step": 2}, "cuda", Levers()),
        ({"mode": "checkpointed"}, "cuda", Levers()),
        ({"speed": "off"}, "cuda", Levers()),
        ({"speed": "off", "compile": True}, "cuda", Levers(compile=True)),
    ],
)
def test_speed_auto_switches_on_compile_and_cuda_graphs_only_where_they_were_measured(
    settings, device, expected
) -> None:
    """--speed auto adds compile and CUDA graphs on CUDA with E = 1 in unrolled mode (the
    device check's fastest row); everywhere else the run uses exactly the levers asked for."""
    config = DistillConfig(**settings)
    assert config.speed == settings.get("speed", "auto")
    assert config.levers_on(torch.device(device)) == expected


def test_speed_is_a_setting_with_a_one_line_error_and_old_manifests_read_as_auto() -> None:
    with pytest.raises(ConfigError) as error:
        DistillConfig(speed="fast")
    assert str(error.value) == "--speed must be one of auto, off; got 'fast'"
    saved = {**MTT.to_dict(), **DistillConfig().resolved(MTT).to_dict()}
    del saved["speed"]  # a manifest written before the setting existed
    assert DistillConfig.from_dict(saved).speed == "auto"
    args = cli.build_parser().parse_args(["distill", "--ipc", "2", "--speed", "off"])
    assert args.speed == "off"
