"""Small file helpers shared by every artifact writer: atomic writes and provenance."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch


def atomic_write(path: str | Path, write: Callable[[str], object]) -> Path:
    """Call ``write(temporary_path)`` then rename the result to ``path``: readers never see a
    half-written file, and an interrupted write leaves the previous version in place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(temporary, 0o666 & ~umask)  # mkstemp makes 0600; give the file normal permissions
    try:
        write(temporary)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
    return path


def write_json(path: str | Path, payload: Any) -> Path:
    """Write ``payload`` as indented JSON (atomically); NaN is refused, use None."""
    text = json.dumps(payload, indent=2, sort_keys=True, allow_nan=False)
    return atomic_write(path, lambda p: Path(p).write_text(text + "\n"))


def versions() -> dict[str, str]:
    from selmatch import __version__

    return {"selmatch": __version__, "torch": torch.__version__}
