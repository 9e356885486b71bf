"""Bad ``--tracking-uri`` values of the search (issue 35): each fails in one line before the data
loads and before Ray starts, with ``--dry-run`` too.

Inputs: ``tracking-a-file`` is a file, so a store below it cannot be made. Port 9 of loopback
(discard) has no server: ``build`` binds it without listening, for as long as the tests run, so
that a connection there is refused whatever else runs on the machine; where that port may not
be bound (not root), nothing listens there on a usual machine either.
"""

from __future__ import annotations

import socket
from pathlib import Path

SEARCH = "python tune/search_alpha_beta.py"
REFUSING = "http://127.0.0.1:9"

# fmt: off
CASES = [
    (f"{SEARCH} --tracking-uri {REFUSING} --dry-run", f"--tracking-uri {REFUSING}"),
    (f"{SEARCH} --tracking-uri {REFUSING}", f"--tracking-uri {REFUSING}", True),
    (f"{SEARCH} --tracking-uri ftp://127.0.0.1/mlflow --dry-run",
     "--tracking-uri ftp://127.0.0.1/mlflow"),
    (f"{SEARCH} --tracking-uri sqlite:///tracking-a-file/mlflow.db",
     "--tracking-uri sqlite:///tracking-a-file/mlflow.db"),
]
# fmt: on

_held: list[socket.socket] = []  # the bound port 9, kept for the life of the test process


def _hold_port_9() -> None:
    if _held:
        return
    held = socket.socket()
    try:
        held.bind(("127.0.0.1", 9))
    except OSError:  # not root, or bound by another process: then it must not listen
        held.close()
    else:
        _held.append(held)
        return
    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", 9)) == 0:
            raise RuntimeError("a server listens on 127.0.0.1:9; the tracking cases need none")


def build(root: Path) -> None:
    (root / "tracking-a-file").write_text("a file, not a folder\n")
    _hold_port_9()
