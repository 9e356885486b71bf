"""Small file helpers shared by every artifact writer and reader: atomic writes, provenance,
and reads of saved files that fail with one line naming the file."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from selmatch.core.config import SelmatchError


class CorruptFileError(SelmatchError):
    """A saved file cannot be read as what it should be: not UTF-8 JSON, or a truncated or
    corrupt safetensors file. The message names the file."""


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


def read_json(path: str | Path) -> Any:
    """The JSON value in ``path``; a missing, unreadable or malformed file is a
    :class:`CorruptFileError` naming it."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise CorruptFileError(f"{path} is not UTF-8 text, so not JSON") from None
    except OSError as error:
        raise CorruptFileError(f"{path} cannot be read ({error.strerror or error})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise CorruptFileError(
            f"{path} is not valid JSON ({error.msg} at line {error.lineno}, column {error.colno})"
        ) from None


def read_safetensors(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors in ``path`` (safetensors: no pickle, nothing executed); a truncated or
    corrupt file is a :class:`CorruptFileError` naming it."""
    path = Path(path)
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as error:
        raise _unreadable(path, error) from None


def open_safetensors(path: str | Path) -> Any:
    """``path`` opened memory-mapped (``safe_open``: tensors read one at a time, only when
    asked for); a truncated or corrupt file is a :class:`CorruptFileError` naming it."""
    path = Path(path)
    try:
        return safe_open(str(path), framework="pt")
    except (SafetensorError, OSError) as error:
        raise _unreadable(path, error) from None


def _unreadable(path: Path, error: Exception) -> CorruptFileError:
    reason = str(error).splitlines()[0] if str(error) else type(error).__name__
    return CorruptFileError(
        f"{path} is not a readable safetensors file ({reason}); it may be truncated or "
        "corrupt: write it again"
    )
