"""A local search's Ray (selmatch_tune.cluster.network): every server it starts listens on loopback,
and a client without the cluster's token is refused."""

from __future__ import annotations

import ipaddress
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import ray

from selmatch_tune.cluster import network
from selmatch_tune.cluster.network import LocalRay, start_local_ray

REFUSED = "InvalidAuthToken: Authentication token is missing or incorrect"
# A second driver attaching to the instance: it prints the id of the node it sees.
CLIENT = """
import sys, ray
ray.init(address=sys.argv[1], log_to_driver=False)
print("NODE", ray.nodes()[0]["NodeID"])
"""


class Started:
    """The processes a Ray start made: this process's descendants that were not there before
    it. psutil checks that a PID still names the same process before it signals one."""

    def __init__(self) -> None:
        self.before = {p.pid for p in psutil.Process().children(recursive=True)}
        self.procs: dict[int, psutil.Process] = {}

    def record(self) -> list[psutil.Process]:
        for proc in psutil.Process().children(recursive=True):
            if proc.pid not in self.before:
                self.procs.setdefault(proc.pid, proc)
        return list(self.procs.values())

    def stop(self) -> None:
        """Those still running once Ray is shut down: SIGTERM, then SIGKILL."""
        _, alive = psutil.wait_procs(list(self.procs.values()), timeout=10)
        for proc in alive:
            proc.terminate()
        _, alive = psutil.wait_procs(alive, timeout=5)
        for proc in alive:
            proc.kill()


@pytest.fixture(scope="module")
def local_ray() -> Iterator[tuple[LocalRay, Started]]:
    """A new local instance: never the study or any other Ray on this machine (the start is
    ``address="local"``; its GCS must be a process it started, checked below)."""
    if ray.is_initialized():
        ray.shutdown()
    started = Started()
    local = start_local_ray(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield local, started
    started.record()
    ray.shutdown()
    started.stop()


def _listening(procs: list[psutil.Process]) -> list[tuple[str, int, int, str]]:
    """(address, port, pid, process name) of every listening TCP socket of ``procs``."""
    found = []
    for proc in procs:
        try:
            for conn in proc.net_connections(kind="tcp"):
                if conn.status == psutil.CONN_LISTEN:
                    found.append((conn.laddr.ip, conn.laddr.port, proc.pid, proc.name()))
        except psutil.NoSuchProcess:
            pass
    return sorted(found)


def _is_loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%")[0])
    mapped = getattr(ip, "ipv4_mapped", None)  # a dual-stack socket: ::ffff:127.0.0.1
    return (mapped or ip).is_loopback


def _client_env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")
    }
    # Without it the client turns 127.0.0.1 into this machine's address (network.py);
    # one connection attempt instead of 20 (1 s apart) before it gives up.
    env.update(RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", RAY_NUM_REDIS_GET_RETRIES="1", **extra)
    return env


def _attach(gcs_address: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", CLIENT, gcs_address],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _cluster_token() -> str:
    """The token this process's Ray uses, in Ray's order: RAY_AUTH_TOKEN, the file at
    RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token (written by the first local ``ray.init``)."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return os.environ["RAY_AUTH_TOKEN"]
    path = os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token"
    return Path(path).read_text().strip()


def test_every_server_of_the_local_ray_listens_on_loopback(local_ray) -> None:
    local, started = local_ray

    @ray.remote(num_cpus=1)
    class Trial:  # Tune's trials are actors: a worker started on demand listens too
        def ping(self) -> int:
            return os.getpid()

    trial = Trial.remote()
    actor_pid = ray.get(trial.ping.remote())
    sockets = _listening([psutil.Process(), *started.record()])  # the driver has a server too
    assert local.loopback and local.node_ip == "127.0.0.1", local
    assert local.token_auth, local
    gcs_port = int(local.gcs_address.rsplit(":", 1)[1])
    assert any(port == gcs_port and pid != os.getpid() for _, port, pid, _ in sockets), (
        f"the GCS at {local.gcs_address} is not a process this test started: {sockets}"
    )
    names = [name for *_, name in sockets]
    assert {"gcs_server", "raylet"} <= set(names) and names.count("raylet") == 2, sockets
    assert any(pid == actor_pid for _, _, pid, _ in sockets), sockets
    assert any(pid == os.getpid() for _, _, pid, _ in sockets), sockets
    exposed = [s for s in sockets if not _is_loopback(s[0])]
    assert not exposed, f"listening beyond loopback: {exposed}"
    ray.kill(trial)


@pytest.mark.parametrize(
    "client",
    [
        {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)},  # a wrong token
        {"RAY_AUTH_MODE": "disabled"},  # no token at all
    ],
    ids=["wrong-token", "no-token"],
)
def test_a_client_without_the_token_is_refused(local_ray, client: dict[str, str]) -> None:
    local, _ = local_ray
    started = time.perf_counter()
    result = _attach(local.gcs_address, _client_env(**client))
    assert result.returncode != 0, result.stdout
    assert "NODE" not in result.stdout
    assert REFUSED in result.stderr, result.stderr[-3000:]
    assert "AuthenticationError" in result.stderr
    assert time.perf_counter() - started < 60


def test_a_client_with_the_token_connects(local_ray) -> None:
    local, _ = local_ray
    env = _client_env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=_cluster_token())
    result = _attach(local.gcs_address, env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"NODE {ray.get_runtime_context().get_node_id()}" in result.stdout


def test_single_machine_mode_sets_and_restores_the_switch() -> None:
    previous = network.ray_constants.ENABLE_RAY_CLUSTER
    with network.single_machine_mode() as switched:
        assert switched
        assert network.ray_constants.ENABLE_RAY_CLUSTER is False
    assert network.ray_constants.ENABLE_RAY_CLUSTER is previous


def test_single_machine_mode_without_the_switch_changes_nothing(monkeypatch) -> None:
    monkeypatch.delattr(network.ray_constants, "ENABLE_RAY_CLUSTER")
    with network.single_machine_mode() as switched:
        assert not switched
    assert not hasattr(network.ray_constants, "ENABLE_RAY_CLUSTER")


def test_start_local_ray_never_takes_an_address() -> None:
    with pytest.raises(ValueError, match="address"):
        start_local_ray(address="auto")
