"""``selmatch distill --speed auto`` against ``--speed off`` as a user runs them: the command line,
real Fashion-MNIST, experts trained by ``selmatch experts`` in the same run.

    python benchmarks/speed_auto.py --device cuda            # a GPU: ConvNet-128, N 20, b 125
    python benchmarks/speed_auto.py --tiny                   # CPU, seconds (auto = off there)

Each speed distils twice, for ``--short`` and ``--long`` iterations, from the same experts,
window and seed; the manifest's ``seconds`` (the matching loop, without start-up and data
loading) gives the steady seconds per iteration, (long − short) / (long − short iterations),
so compilation and graph capture cancel out, and the start cost, short − short × that. Every
run compiles into its own empty cache folder, so both runs of a speed pay the same compilation
(with one shared cache the second compiles from disk, and the difference no longer cancels). The
final losses of the two speeds after ``--long`` iterations are printed beside each other: the
levers change rounding only, so they should agree to a few digits, not bit for bit.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path


def selmatch(*arguments: str, cache: Path | None = None) -> None:
    """``selmatch ARGUMENTS``; ``cache``: an empty folder for inductor's and Triton's on-disk
    caches, so that every run compiles from nothing (a warm cache would make the second run's
    start cheaper than the first's, and the difference of the two no longer cancel it)."""
    env = dict(os.environ)
    if cache is not None:
        env |= {
            "TORCHINDUCTOR_CACHE_DIR": str(cache / "inductor"),
            "TRITON_CACHE_DIR": str(cache / "triton"),
        }
    subprocess.run([sys.executable, "-m", "selmatch", *arguments], check=True, env=env)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--device", default="auto", help="cpu, cuda, ... (default: auto)")
    parser.add_argument("--tiny", action="store_true", help="width 8, N 2, b 10: a CPU check")
    parser.add_argument("--short", type=int, default=20, help="iterations of the short run")
    parser.add_argument("--long", type=int, default=120, help="iterations of the long run")
    parser.add_argument("--data-root", default=None, help="passed to every command")
    parser.add_argument("--work", type=Path, default=None, help="folder (default: a temporary)")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args()
    if not 0 < args.short < args.long:
        parser.error(
            f"--short and --long must satisfy 0 < short < long, got {args.short}, {args.long}"
        )
    work = args.work or Path(tempfile.mkdtemp(prefix="speed-auto-"))
    common = ["--device", args.device, "--no-progress"]
    common += ["--data-root", args.data_root] if args.data_root else []
    width, steps, batch, per_class, ipc = (
        ("8", "2", "10", "50", "5") if args.tiny else ("128", "20", "125", "1000", "50")
    )
    experts = str(work / "experts")
    selmatch(
        "experts",
        "--out",
        experts,
        "--width",
        width,
        "--num-experts",
        "2",
        "--epochs",
        "6",
        "--per-class",
        per_class,
        *common,
    )
    result: dict[str, dict[str, float]] = {}
    for speed in ("off", "auto"):
        seconds, losses = {}, {}
        for iterations in (args.short, args.long):
            out = work / f"{speed}-{iterations}"
            selmatch(
                "distill",
                "--method",
                "selmatch",
                "--ipc",
                ipc,
                "--experts",
                experts,
                "--scores",
                experts,
                "--score",
                "el2n",
                "--beta",
                "0.2",
                "--alpha",
                "0.5",
                "--beta-convention",
                "data-fraction",
                "--student-steps",
                steps,
                "--expert-epochs",
                "2",
                "--max-start-epoch",
                "4",
                "--syn-batch",
                batch,
                "--iterations",
                str(iterations),
                "--speed",
                speed,
                "--checkpoint-every",
                str(args.long),
                "--out",
                str(out),
                *common,
                cache=work / f"cache-{speed}-{iterations}",
            )
            manifest = json.loads((out / "manifest.json").read_text())
            seconds[iterations], losses[iterations] = manifest["seconds"], manifest["final_loss"]
        per_iteration = (seconds[args.long] - seconds[args.short]) / (args.long - args.short)
        result[speed] = {
            "s_per_iteration": per_iteration,
            "start_s": seconds[args.short] - args.short * per_iteration,
            "final_loss": losses[args.long],
        }
    ratio = result["off"]["s_per_iteration"] / result["auto"]["s_per_iteration"]
    report = {
        "device": args.device,
        "tiny": args.tiny,
        "short": args.short,
        "long": args.long,
        "speeds": result,
        "auto_vs_off": ratio,
    }
    print(json.dumps(report, indent=2))
    print(
        f"--speed auto: {result['auto']['s_per_iteration']:.4f} s/iteration "
        f"(start {result['auto']['start_s']:.1f} s), --speed off: "
        f"{result['off']['s_per_iteration']:.4f} s/iteration (start "
        f"{result['off']['start_s']:.1f} s): auto is {ratio:.2f}x off; final loss "
        f"{result['auto']['final_loss']:.5f} vs {result['off']['final_loss']:.5f}"
    )
    if args.out:
        args.out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
