"""Progress bars for long work: lively on a terminal, a line every 30 s in a log file."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


def progress_bar(iterable: Iterable[T], *, desc: str, enabled: bool = True, **kwargs: Any) -> Any:
    """A tqdm bar on stderr; refreshed at most every 30 s when stderr is not a terminal."""
    interactive = sys.stderr.isatty()
    return tqdm(
        iterable,
        desc=desc,
        disable=not enabled,
        leave=False,
        mininterval=0.2 if interactive else 30.0,
        dynamic_ncols=True,
        **kwargs,
    )
