"""Bad-input cases: an output that would overwrite, or land inside, another command's artifact;
a score imported over one the folder holds; score tables and experts made from other data.

The inputs (prefix ``art-``): ``art-experts/`` an experts folder (its manifest, and a score table
of Fashion-MNIST's 60,000 training images recorded without a digest); ``art-window/`` a window
set; ``art-search/`` a search folder (its state file); ``art-eval.json`` an evaluation result;
``art-notes.txt`` a file of the user's; ``art-scores.npy`` 60,000 scores to import;
``art-short-scores/`` a table of 100 images; ``art-other-data/`` a table of 60,000 images whose
recorded digest is another data's; ``art-experts-other-data/`` experts (the default settings)
trained on another copy of Fashion-MNIST.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

SEARCH = "python tune/search_alpha_beta.py"
OTHER_DATA = {
    "dataset": "fashion-mnist",
    "train_size": 60000,
    "test_size": 10000,
    "digest": "0123456789abcdef",
}

# fmt: off
CASES = [
    # an --out equal to another kind of artifact
    ("selmatch window --ipc 5 --scores art-experts --out art-experts", "--out art-experts"),
    ("selmatch window --ipc 5 --out good-set", "--out good-set"),
    ("selmatch window-sweep --ipc 5 --out art-window", "--out art-window"),
    ("selmatch distill --ipc 5 --out art-window", "--out art-window"),
    ("selmatch distill --ipc 5 --out art-search", "--out art-search"),
    ("selmatch experts --out good-set", "--out good-set"),
    ("selmatch export good-set --out art-experts", "--out art-experts"),
    ("selmatch coverage --set good-set --out art-eval.json", "--out art-eval.json"),
    ("selmatch evaluate --ipc 5 --out art-notes.txt", "--out art-notes.txt"),
    (f"{SEARCH} --out art-experts", "--out art-experts"),
    (f"{SEARCH} --out good-set", "--out good-set"),
    # an --out inside another artifact, or one of its files
    ("selmatch evaluate --set good-set --out good-set/manifest.json",
     "--out good-set/manifest.json"),
    ("selmatch coverage --set good-set --out good-set/set.safetensors",
     "--out good-set/set.safetensors"),
    ("selmatch evaluate --ipc 5 --out art-experts/scores.json", "--out art-experts/scores.json"),
    ("selmatch evaluate --ipc 5 --out art-experts/expert_0.safetensors",
     "--out art-experts/expert_0.safetensors"),
    ("selmatch window --ipc 5 --scores art-experts --out art-experts/window",
     "--out art-experts/window"),
    ("selmatch experts --out art-search/experts", "--out art-search/experts"),
    (f"{SEARCH} --out art-search/again", "--out art-search/again"),
    # scores: written only into a score table or an experts folder; no silent replacement
    ("selmatch scores --import art-scores.npy --scores good-set", "--scores good-set"),
    ("selmatch scores --import art-scores.npy --name forgetting --scores art-experts",
     "--name forgetting"),
    ("selmatch scores --estimate consistency --scores art-window", "--scores art-window"),
    # score tables and experts bound to their data
    ("selmatch window --ipc 5 --scores art-short-scores", "--scores art-short-scores"),
    ("selmatch window --ipc 5 --scores art-other-data", "--scores art-other-data"),
    ("selmatch window-sweep --ipc 5 --scores art-other-data", "--scores art-other-data"),
    ("selmatch scores --import art-scores.npy --scores art-other-data", "--scores art-other-data"),
    ("selmatch experts --out art-experts-other-data", "--out art-experts-other-data"),
    # a folder whose manifest was damaged (by an earlier version's window --out, say)
    ("selmatch experts --out experts-without-config", "--out experts-without-config"),
]
# fmt: on


def _json(path: Path, value: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value))


def _table(folder: Path, size: int, data: dict | None = None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    save_file(
        {"forgetting": torch.zeros(size, dtype=torch.float64)}, str(folder / "scores.safetensors")
    )
    info: dict = {"directions_higher_is_harder": {"forgetting": True}, "dataset": "fashion-mnist"}
    if data is not None:
        info["data"] = data
    _json(folder / "scores.json", info)


def build(root: Path) -> None:
    from selmatch.cli import build_parser
    from selmatch.cli.experts import expert_config

    experts = {"kind": "selmatch-experts", "format_version": 1, "config": {}, "layout": {}}
    _json(root / "art-experts" / "manifest.json", experts)
    (root / "art-experts" / "expert_0.safetensors").write_bytes(b"not read by these cases")
    _table(root / "art-experts", 60000)
    _json(root / "art-window" / "manifest.json", {"kind": "selmatch-set", "method": "window"})
    _json(root / "art-search" / "search_state.json", {"config": {}, "started": True})
    _json(root / "art-eval.json", {"kind": "selmatch-evaluation", "result": {}})
    (root / "art-notes.txt").write_text("the user's notes\n")
    np.save(root / "art-scores.npy", np.zeros(60000))
    _table(root / "art-short-scores", 100)
    _table(root / "art-other-data", 60000, OTHER_DATA)
    args = build_parser().parse_args(["experts"])
    _json(
        root / "art-experts-other-data" / "manifest.json",
        {
            "kind": "selmatch-experts",
            "format_version": 1,
            "config": expert_config(args, "fashion-mnist").to_dict(),
            "layout": {},
            "data": OTHER_DATA,
        },
    )
