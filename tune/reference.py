"""The table of docs/configuration.md: every setting of a search, its value in each preset and
what it means, made from the settings' declarations (``selmatch.core.config.setting``) and the
search's options, so the reference cannot drift from the code.

    python -m selmatch_tune.reference          # rewrite the table in docs/configuration.md
    python -m selmatch_tune.reference --check  # exit 1 if the page is not the generated one
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path
from typing import Any

from selmatch.cli.options import default_of, describe, field_setting
from selmatch_tune.results.tracking import flatten
from selmatch_tune.search_alpha_beta import option_for, setting_at
from selmatch_tune.settings.presets import PRESETS

PAGE = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"
BEGIN = "<!-- the table below is generated: python -m selmatch_tune.reference -->"
END = "<!-- end of the generated table -->"
SHOWN = ("smoke", "quick", "paper")
#: what a setting means in the search beyond its own declaration
NOTES = {
    "experts.dataset": "follows `dataset`",
    "consistency.dataset": "follows `dataset` (used when `score` is consistency)",
    "consistency.model.width": "not set by `--width`",
    "consistency.val_fraction": "must equal `experts.val_fraction`: the score never sees the "
    "validation slice",
    "consistency.split_seed": "must equal `experts.split_seed`",
    "short.train.augment": "distilled sets get combined augmentation (DSA on D_distill, "
    "crop+flip on D_select)",
    "final.train.augment": "distilled sets get combined augmentation (DSA on D_distill, "
    "crop+flip on D_select)",
}
DSA_ROW = (
    "| `short.train.dsa.*`, `final.train.dsa.*` | defaults | defaults | defaults | DSA "
    "parameters (`strategy` = `color_crop_cutout_flip_scale_rotate`, one shared draw per "
    "batch, flip p 0.5, scale 1.2, rotate 15°, crop pad 0.125, cutout 0.5, brightness 1, "
    "saturation 2, contrast 0.5: the values of the MTT/SelMatch code) |"
)


def show(value: Any) -> str:
    """A preset's value in the table: — for none, long arithmetic grids shortened."""
    if value is None:
        return "—"
    if isinstance(value, list):
        if len(value) > 6 and all(isinstance(v, (int, float)) for v in value):
            steps = {round(b - a, 9) for a, b in itertools.pairwise(value)}
            if len(steps) == 1:
                return f"{show(value[0])}, {show(value[1])}, …, {show(value[-1])}"
        return ", ".join(show(v) for v in value)
    if isinstance(value, float):
        return f"{value:g}"
    text = str(value)
    return "text" if len(text) > 40 else text.replace("|", "\\|").replace("<", "&lt;")


def meaning(path: str) -> str:
    cls, name = setting_at(path)
    field, declared = field_setting(cls, name)
    option = option_for(path)
    # as the search's --help says it (a switch on by default turns it off)
    text = describe(declared, default_of(field) if option else None)
    if option:
        text = f"`{option}`: {text}"
    if path in NOTES:
        text = f"{text}; {NOTES[path]}"
    return text.replace("|", "\\|")


def rows() -> list[str]:
    values = {name: flatten(PRESETS[name]().to_dict()) for name in SHOWN}
    out = ["| setting | smoke | quick | paper | meaning |", "|---|---|---|---|---|"]
    for path in values["quick"]:
        if ".dsa." in path:
            continue
        cells = " | ".join(show(values[name].get(path)) for name in SHOWN)
        out.append(f"| `{path}` | {cells} | {meaning(path)} |")
    out.append(DSA_ROW)
    return out


def page(text: str) -> str:
    """``text`` (the page) with its generated table replaced by the current one."""
    head, _, rest = text.partition(BEGIN)
    _, _, tail = rest.partition(END)
    return f"{head}{BEGIN}\n" + "\n".join(rows()) + f"\n{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--check",
        action="store_true",
        help="exit 1 if docs/configuration.md is not the generated page",
    )
    args = parser.parse_args(argv)
    text = PAGE.read_text()
    if BEGIN not in text or END not in text:
        print(f"{PAGE}: the markers of the generated table are missing", file=sys.stderr)
        return 1
    fresh = page(text)
    if args.check:
        if fresh != text:
            print(f"{PAGE} is out of date: run python -m selmatch_tune.reference", file=sys.stderr)
            return 1
        return 0
    PAGE.write_text(fresh)
    print(f"wrote the table of {len(rows()) - 3} settings to {PAGE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
