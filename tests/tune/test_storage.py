"""The storage check's driver and node sides on local folders, without Ray (the driver is the
only node); the checks from the nodes of a cluster, on S3, are in test_s3_storage.py."""

import pytest

from selmatch.core.config import ConfigError
from selmatch_tune.cluster.storage import DRIVER, check_storage, node_probe


def test_a_folder_the_driver_writes_passes_and_is_left_as_it_was(tmp_path) -> None:
    lines: list[str] = []
    assert check_storage(str(tmp_path / "ray"), log=lines.append) == 1
    assert lines == [f"storage {tmp_path / 'ray'}: checked on 1 node(s), each wrote and read it"]
    assert list((tmp_path / "ray").iterdir()) == []  # the check folder is removed


def test_a_folder_the_driver_cannot_write_is_a_one_line_error_naming_the_flag(tmp_path) -> None:
    (tmp_path / "a-file").write_text("not a folder")
    storage = str(tmp_path / "a-file" / "ray")
    with pytest.raises(ConfigError) as raised:
        check_storage(storage, log=lambda _: None)
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith(f"--storage {storage}: the driver cannot write and read there (")
    assert message.endswith("NFS, EFS) or a bucket: s3://bucket/path or gs://bucket/path")


def test_a_node_that_does_not_see_the_drivers_file_writes_nothing(tmp_path) -> None:
    """What a node's task does where its disk is not the driver's: the driver's token is not
    there, so it fails before leaving a file of its own."""
    with pytest.raises(FileNotFoundError):
        node_probe(str(tmp_path), "token", "node-a")
    assert list(tmp_path.iterdir()) == []
    (tmp_path / DRIVER).write_text("another token")
    with pytest.raises(OSError, match="not its token"):
        node_probe(str(tmp_path), "token", "node-a")
    (tmp_path / DRIVER).write_text("token")
    node_probe(tmp_path.as_uri(), "token", "node-a")  # a file:// URI as well as a folder
    assert (tmp_path / "node-a").read_text() == "token node-a"


def test_a_uri_pyarrow_does_not_open_is_a_one_line_error_naming_the_flag() -> None:
    with pytest.raises(ConfigError, match=r"^--storage foo://x/ray: not a folder or a URI") as e:
        check_storage("foo://x/ray", log=lambda _: None)
    assert "\n" not in str(e.value)
