"""Storage every node reaches: Tune's ``--storage`` checked from every node before the first
trial.

Each trial writes its checkpoint (its distilled set) to the storage from the node it runs on,
and the driver reads the winner's back. Ray checks only that each process can write where it
runs, so a local folder on a cluster without a shared mount passes Ray's own check and leaves
every worker's sets on that worker's disk. Here the driver writes a token into a folder of its
own under the storage, one task pinned to each alive node reads it and writes its own file
beside it, and the driver reads every node's file back, then removes the folder. A folder
every node mounts (NFS, EFS) or a bucket (``s3://bucket/path``, ``gs://bucket/path``, read
through pyarrow with each node's own credentials) passes.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable
from pathlib import Path

import pyarrow.fs
import ray
from ray.exceptions import RayError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from selmatch.core.config import ConfigError

Log = Callable[[str], None]
#: What runs on each node: ``probe(folder, token, node_id)`` reads the driver's token in the
#: check folder and leaves this node's file there (tests replace it to fail on one node)
Probe = Callable[[str, str, str], None]

DRIVER = "driver"
INSTEAD = (
    "use a folder every node mounts (NFS, EFS) or a bucket: s3://bucket/path or gs://bucket/path"
)


def open_location(location: str) -> tuple[pyarrow.fs.FileSystem, str]:
    """The file system and path of a local folder or a URI (``s3://``, ``gs://``, ``file://``):
    S3's endpoint and credentials come from the environment (``AWS_ENDPOINT_URL``, ...)."""
    return pyarrow.fs.FileSystem.from_uri(location)


def node_probe(folder: str, token: str, node_id: str) -> None:
    """On a node: read the driver's token, then (only then: nothing is left on a disk of this
    node's own) write this node's file."""
    filesystem, path = open_location(folder)
    with filesystem.open_input_stream(f"{path}/{DRIVER}") as stream:
        found = stream.read().decode()
    if found != token:
        raise OSError(f"the driver's file holds {found!r}, not its token")
    with filesystem.open_output_stream(f"{path}/{node_id}") as stream:
        stream.write(f"{token} {node_id}".encode())


@ray.remote(num_cpus=0, max_retries=0)
def _on_node(folder: str, token: str, probe: Probe) -> None:
    probe(folder, token, ray.get_runtime_context().get_node_id())


def check_storage(
    storage: str, *, log: Log = print, probe: Probe = node_probe, timeout: float = 60.0
) -> int:
    """Check that the driver and every alive Ray node (one task each, pinned there, asking for
    no CPU so that it never waits for a trial's slot) can write and read ``storage``, a
    folder or a URI; the number of nodes checked. Without a running Ray (or on one node)
    only the driver's write and read are checked. A failure is a one-line
    :class:`ConfigError` naming ``--storage`` and the nodes."""
    location = storage if "://" in storage else str(Path(storage).expanduser().resolve())
    folder = f"{location.rstrip('/')}/.storage-check-{uuid.uuid4().hex[:12]}"
    token = uuid.uuid4().hex
    try:
        filesystem, path = open_location(folder)
    except (OSError, ValueError) as error:  # pyarrow's ArrowInvalid is a ValueError
        raise ConfigError(
            f"--storage {storage}: not a folder or a URI pyarrow opens ({_brief(error)}); {INSTEAD}"
        ) from None
    nodes = _alive_nodes()
    failed: dict[str, str] = {}
    try:
        try:
            filesystem.create_dir(path)
            with filesystem.open_output_stream(f"{path}/{DRIVER}") as stream:
                stream.write(token.encode())
            with filesystem.open_input_stream(f"{path}/{DRIVER}") as stream:
                stream.read()
        except OSError as error:
            raise ConfigError(
                f"--storage {storage}: the driver cannot write and read there "
                f"({_brief(error)}); {INSTEAD}"
            ) from None
        if len(nodes) > 1:
            failed = _run_on_nodes(nodes, folder, token, probe, timeout)
            for node_id, name in nodes.items():
                if node_id not in failed:
                    failed.update(_read_back(filesystem, path, token, node_id, name))
    finally:
        with contextlib.suppress(OSError):  # the driver could not make it in the first place
            filesystem.delete_dir(path)
    if failed:
        named = "; ".join(failed.values())
        raise ConfigError(
            f"--storage {storage} is not shared by every node of the Ray cluster: "
            f"{named}; {INSTEAD}"
        )
    count = max(len(nodes), 1)
    log(f"storage {storage}: checked on {count} node(s), each wrote and read it")
    return count


def _alive_nodes() -> dict[str, str]:
    """Node id → a name for the messages (its address and the id's start)."""
    if not ray.is_initialized():
        return {}
    return {
        n["NodeID"]: f"node {n['NodeManagerAddress']} ({n['NodeID'][:8]})"
        for n in ray.nodes()
        if n["Alive"]
    }


def _run_on_nodes(
    nodes: dict[str, str], folder: str, token: str, probe: Probe, timeout: float
) -> dict[str, str]:
    """Node id → what went wrong there, for the nodes whose task failed or did not answer."""
    tasks = {
        node_id: _on_node.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False)
        ).remote(folder, token, probe)
        for node_id in nodes
    }
    ready, _ = ray.wait(list(tasks.values()), num_returns=len(tasks), timeout=timeout)
    failed = {}
    for node_id, task in tasks.items():
        if task not in ready:
            ray.cancel(task)
            failed[node_id] = f"{nodes[node_id]} did not answer in {timeout:g} s"
            continue
        try:
            ray.get(task)
        except RayError as error:
            cause = getattr(error, "cause", None) or error
            failed[node_id] = f"{nodes[node_id]} cannot read the driver's file there or write " + (
                f"its own ({_brief(cause)})"
            )
    return failed


def _read_back(
    filesystem: pyarrow.fs.FileSystem, path: str, token: str, node_id: str, name: str
) -> dict[str, str]:
    """The node's file as the driver reads it; {node_id: what is wrong} when it is not."""
    try:
        with filesystem.open_input_stream(f"{path}/{node_id}") as stream:
            if stream.read().decode() == f"{token} {node_id}":
                return {}
            problem = "holds something else"
    except OSError as error:
        problem = f"cannot be read ({_brief(error)})"
    return {node_id: f"the file {name} wrote there {problem} on the driver"}


def _brief(error: BaseException) -> str:
    """An error as a short piece of one line."""
    text = " ".join(str(error).split())
    text = text if len(text) <= 200 else text[:197] + "..."
    return f"{type(error).__name__}: {text}"
