"""Where a local search's Ray listens: on loopback only, behind Ray's token authentication.

Ray 2.60 binds its servers (the GCS, the raylet's node manager and object manager, the
core-worker server of the driver and of every worker) to loopback only when the node's IP is
loopback; for any other node IP they listen on all interfaces (``*:port``, measured with
``ss -ltn``; ``127.0.0.2`` is not enough either). ``ray.init(_node_ip_address="127.0.0.1")``
cannot ask for it: Ray replaces a loopback address by the machine's own
(``ray._private.services.resolve_ip_for_localhost``). The node IP is loopback in Ray's
single-machine mode, its default on macOS and Windows: ``services.get_node_ip_address`` then
returns ``get_localhost_ip()``. The switch is ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER`` (``0`` on
Linux gives that mode), read once, when Ray is imported, into
``ray._private.ray_constants.ENABLE_RAY_CLUSTER``; a search imports Ray long before it starts
one, so ``start_local_ray`` sets that constant for its ``ray.init`` and puts it back after.
Where this Ray has no such constant, Ray starts as before, on all interfaces, and
``LocalRay.loopback`` says so. docs/cluster.md ("Network exposure") lists what listens.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import ray
from ray._private import ray_constants

LOOPBACK = ("127.0.0.1", "::1")
# Ray 2.60 turns token authentication on for a new local instance unless RAY_AUTH_MODE says
# otherwise, and writes the mode it uses into this process's environment.
AUTH_MODE = "RAY_AUTH_MODE"


@dataclass(frozen=True)
class LocalRay:
    """A Ray instance this process started: ``gcs_address`` (``ip:port``), the ``node_ip`` its
    servers listen on (loopback, or the machine's own address and then all interfaces) and
    whether clients must hold the cluster's token (``token_auth``)."""

    gcs_address: str
    node_ip: str
    token_auth: bool

    @property
    def loopback(self) -> bool:
        return self.node_ip in LOOPBACK

    def describe(self) -> str:
        where = (
            f"listening on {self.node_ip} only"
            if self.loopback
            else f"node address {self.node_ip}, listening on all interfaces (this Ray cannot "
            "bind loopback)"
        )
        token = (
            "token authentication on"
            if self.token_auth
            else f"token authentication OFF ({AUTH_MODE}={os.environ.get(AUTH_MODE)})"
        )
        return f"{where}, {token}"


@contextmanager
def single_machine_mode() -> Iterator[bool]:
    """Ray's single-machine mode (node IP loopback) for the ``ray.init`` inside. Yields whether
    this Ray has the switch; without it, nothing is changed."""
    if not isinstance(getattr(ray_constants, "ENABLE_RAY_CLUSTER", None), bool):
        yield False
        return
    previous = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield True
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = previous


def start_local_ray(**init_args: Any) -> LocalRay:
    """Start a new Ray instance on this machine, its servers on loopback where this Ray allows
    it. ``init_args`` go to ``ray.init`` (``num_cpus``, ``log_to_driver``...). It never
    attaches to a running instance (``address="local"``: neither ``RAY_ADDRESS`` nor the
    cluster a ``ray start`` recorded in ``/tmp/ray/ray_current_cluster`` is used).

    Another process attaching to it (``ray.init(address=<gcs_address>)``, ``ray status``) needs
    the token and ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``: without it, Ray turns the loopback
    address it is given into the machine's own, where nothing listens."""
    if "address" in init_args:
        raise ValueError("start_local_ray starts a new instance: leave out address")
    with single_machine_mode():
        ray.init(address="local", **init_args)
    return LocalRay(
        gcs_address=ray.get_runtime_context().gcs_address,
        node_ip=ray.util.get_node_ip_address(),
        token_auth=os.environ.get(AUTH_MODE, "").lower() == "token",
    )
