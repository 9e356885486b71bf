"""Named starting points for a search; every value can be overridden from the command line.

- ``smoke``: seconds of work on Fashion-MNIST (tiny networks, 2 IPCs); what the tests run.
- ``quick``: ``make demo`` — Fashion-MNIST at IPC 10 and 50 on 2 CPU cores in about ten
  minutes. The model (ConvNet width 16), the experts (2 × 4 epochs on 1,000 images per
  class), the consistency score (4 networks × 4 epochs on half of those), the α grid
  (quarters), N, b, the iterations (30) and the evaluation budgets are all shrunk, and the
  output says so: its numbers are a demonstration, not the paper's.
- ``paper``: the SelMatch paper's CIFAR-10 settings (Table 5, METHOD.md) for a GPU cluster,
  with one stated reduction: each α trial distils for 2,000 iterations instead of 10,000
  (a winner can be distilled longer with `selmatch distill`, its manifest's settings and
  ``--iterations``).
"""

from __future__ import annotations

from selmatch.distillation.distill import DistillConfig
from selmatch.evaluation.evaluate import EvalConfig
from selmatch.selection.consistency import ConsistencyConfig
from selmatch.training.augment import DSAConfig
from selmatch.training.experts import ExpertConfig
from selmatch.training.models import ModelConfig
from selmatch.training.train import TrainConfig
from selmatch_tune.settings.config import SearchConfig

TENTHS = tuple(round(0.1 * i, 1) for i in range(10))  # 0, 0.1, ..., 0.9
ALPHAS = tuple(round(0.1 * i, 1) for i in range(11))  # 0 (selection only), 0.1, ..., 1.0
#: the CPU demo's α grid: with one seed per trial, neighbours 0.1 apart differ by less than
#: the seed noise, and the concave search then covers the whole grid
QUARTERS = (0.0, 0.25, 0.5, 0.75, 1.0)


def _eval(model: ModelConfig, epochs: int, seeds: int) -> EvalConfig:
    return EvalConfig(
        model=model,
        train=TrainConfig(epochs=epochs, augment="dsa", dsa=DSAConfig()),
        num_seeds=seeds,
    )


def smoke() -> SearchConfig:
    model = ModelConfig(width=8)
    return SearchConfig(
        dataset="fashion-mnist",
        ipcs=(2, 4),
        experts=ExpertConfig(model=model, num_experts=1, epochs=3, per_class=50, batch_size=64),
        score="consistency",
        consistency=ConsistencyConfig(
            model=model, num_networks=4, epochs=2, per_class=50, batch_size=64
        ),
        beta_convention="data-fraction",
        beta_grid=(0.0, 0.3, 0.6, 0.9),
        alpha_grid=(0.0, 0.5, 1.0),
        short=_eval(model, 5, 1),
        final=_eval(model, 10, 1),
        distill=DistillConfig(
            n_student_steps=2,
            expert_epochs=1,
            max_start_epoch=2,
            syn_batch=20,
            iterations=3,
            checkpoint_every=3,
        ),
        full_eval_top=1,
        max_concurrent=2,
        noise=0.0,
        top_repeats=0,
        predict_ipcs=(3, 8),
        preset="smoke",
        reduced="smoke test: width-8 ConvNet, 1 expert x 3 epochs on 50 images/class, "
        "consistency from 4 networks x 2 epochs, 5/10-epoch evaluations, 3 distillation "
        "iterations",
    )


#: The quick preset's consistency score: 4 width-16 networks, each trained for 4 epochs on half
#: of 1,000 images per class (every one of the 10,000 held out twice); docs/results.md has the
#: budget comparison that chose it.
QUICK_CONSISTENCY = ConsistencyConfig(
    model=ModelConfig(width=16), num_networks=4, epochs=4, per_class=1000
)


def quick() -> SearchConfig:
    model = ModelConfig(width=16)
    return SearchConfig(
        dataset="fashion-mnist",
        ipcs=(10, 50),
        experts=ExpertConfig(
            model=model, num_experts=2, epochs=4, per_class=1000, batch_size=256, el2n_epoch=1
        ),
        score="consistency",
        consistency=QUICK_CONSISTENCY,
        beta_convention="data-fraction",
        beta_grid=TENTHS,
        alpha_grid=QUARTERS,
        short=_eval(model, 50, 1),
        # the target budget: the steps of 1 epoch over the training pool (hundreds of epochs
        # over IPC 10's 100 images, about a hundred over IPC 50's), what fits the demo's 10 min
        final=_eval(model, 200, 2).replace(full_epochs=1.0),
        distill=DistillConfig(
            n_student_steps=10,
            expert_epochs=2,
            max_start_epoch=2,
            syn_batch=64,
            iterations=30,
            checkpoint_every=30,
        ),
        full_eval_top=2,
        max_concurrent=2,
        noise=0.005,
        top_repeats=1,
        predict_ipcs=(20, 100),
        preset="quick",
        reduced="CPU demo: ConvNet width 16 (paper 128), 2 experts x 4 epochs on 1,000 "
        "images/class (paper 100 x 100 on all), consistency from 4 networks x 4 epochs on half "
        "of those, α grid in quarters (paper tenths), N=10 b=64 (paper 55/125), 30 iterations "
        "(paper 10,000), 50-epoch trials, a target budget of 1 full-data epoch (paper 50) with 2 "
        "seeds",
    )


def paper() -> SearchConfig:
    convnet = ModelConfig(width=128, norm="batch")
    resnet = ModelConfig(name="resnet18")
    return SearchConfig(
        dataset="cifar10",
        ipcs=(250, 500, 1000, 1500),
        experts=ExpertConfig(model=convnet, num_experts=100, epochs=100, batch_size=256),
        score="forgetting",
        consistency=ConsistencyConfig(model=convnet, num_networks=8, epochs=30),
        beta_convention="ipc-units",
        beta_grid=TENTHS,
        alpha_grid=ALPHAS,
        short=_eval(resnet, 200, 1),
        # the target budget: the paper's evaluation, the steps of 50 full-data epochs
        final=_eval(resnet, 1000, 5).replace(full_epochs=50),
        distill=DistillConfig(
            n_student_steps=55,
            expert_epochs=2,
            max_start_epoch=80,
            syn_batch=125,
            iterations=2000,
            lr_images=1000.0,
            checkpoint_every=500,
        ),
        full_eval_top=3,
        max_concurrent=8,
        cpus_per_trial=4.0,
        gpus_per_trial=1.0,
        noise=0.003,
        top_repeats=1,
        predict_ipcs=(100, 2000),
        preset="paper",
        reduced="paper settings of Table 5 except: 2,000 distillation iterations per α trial "
        "(paper 10,000), Forgetting scores (paper: C-scores; import them with `selmatch "
        "scores --import FILE.npy --scores DIR` and search with --score cscore --score-table "
        "DIR, or estimate them with --score consistency), 200-epoch trials and 1,000-epoch "
        "final evaluation at every IPC",
    )


PRESETS = {"smoke": smoke, "quick": quick, "paper": paper}
