"""``check_tracking_uri``: a ``--tracking-uri`` the search could not log to fails before anything
starts, in one line that says what is wrong; every server here listens on loopback."""

from __future__ import annotations

import http.server
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import mlflow.environment_variables
import pytest

from selmatch.core.config import ConfigError
from selmatch_tune.results.tracking_uri import HTTP_LIMITS, bound_http_retries, check_tracking_uri

LEAVE_OUT = "leave --tracking-uri out"


def refused(uri: str, **kwargs: float) -> str:
    """The check's message for ``uri``: one line that names the option and the URI."""
    with pytest.raises(ConfigError) as raised:
        check_tracking_uri(uri, **kwargs)
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith(f"--tracking-uri {uri}")
    return message


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A loopback port bound but never listened on: a connection there is refused, and no
    other process can take the port while the test runs."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        yield held.getsockname()[1]


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A loopback port that accepts connections (the kernel's backlog) but never answers."""
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        yield listening.getsockname()[1]


class _NotMlflow(http.server.BaseHTTPRequestHandler):
    """A web server of another kind: an HTML page for every path below ``/site``, 404 for
    everything else."""

    def do_GET(self) -> None:
        found = self.path.startswith("/site/")
        body = b"<html>hello</html>" if found else b"<html>not found</html>"
        self.send_response(200 if found else 404)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def plain_http() -> Iterator[str]:
    server = http.server.HTTPServer(("127.0.0.1", 0), _NotMlflow)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_a_port_where_nothing_listens_is_a_refused_connection(closed_port: int) -> None:
    message = refused(f"http://127.0.0.1:{closed_port}")
    assert f"connection refused at 127.0.0.1:{closed_port}" in message
    assert "start the MLflow server, fix the URI, or " + LEAVE_OUT in message


def test_a_server_that_never_answers_is_a_timeout_after_the_timeout_given(silent_port: int) -> None:
    message = refused(f"http://127.0.0.1:{silent_port}", timeout=0.2)
    assert f"no answer from 127.0.0.1:{silent_port} within 0.2 s (timeout)" in message


@pytest.mark.parametrize(("path", "code"), [("", 404), ("/site", 200)])
def test_a_web_server_that_is_not_mlflow_is_named_so(plain_http: str, path: str, code: int) -> None:
    message = refused(plain_http + path)
    answered = f"the server answered HTTP {code} to MLflow's /api/2.0/mlflow/experiments/search"
    assert answered in message
    assert "not an MLflow tracking server" in message


def test_a_host_name_that_does_not_resolve_is_a_dns_failure(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_such_host(*args: object, **kwargs: object) -> None:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_such_host)
    message = refused("http://mlflow.example.invalid:5000")
    assert "host name 'mlflow.example.invalid' not found (DNS lookup failed" in message


@pytest.mark.parametrize("uri", ["ftp://127.0.0.1/mlflow", "mlflow+grpc://127.0.0.1:5000"])
def test_a_scheme_mlflow_does_not_know_is_unsupported(uri: str) -> None:
    message = refused(uri)
    assert "unsupported scheme" in message and LEAVE_OUT in message


@pytest.mark.parametrize("uri", ["databricks", "databricks://profile", "postgresql://u@db/mlflow"])
def test_schemes_without_a_probe_are_accepted_unprobed(uri: str) -> None:
    check_tracking_uri(uri)


def test_a_sqlite_store_below_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("not a folder\n")
    message = refused(f"sqlite:///{tmp_path}/a-file/store/mlflow.db")
    assert f"folder {tmp_path}/a-file/store lies below {tmp_path}/a-file, which is a file" in (
        message
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]


def test_a_sqlite_store_in_absent_folders_below_a_writable_one_passes_and_creates_nothing(
    tmp_path: Path,
) -> None:
    check_tracking_uri(f"sqlite:///{tmp_path}/new/deeper/mlflow.db")
    assert list(tmp_path.iterdir()) == []


def test_a_sqlite_store_in_an_unwritable_folder_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    if os.geteuid() == 0:  # root writes in any folder: answer as the folder's mode would
        access = os.access
        monkeypatch.setattr(
            os, "access", lambda path, mode: access(path, mode) and Path(path) != locked
        )
    try:
        message = refused(f"sqlite:///{locked}/new/mlflow.db")
    finally:
        locked.chmod(0o700)
    assert f"cannot write in {locked} (permission denied)" in message
    assert list(locked.iterdir()) == []


def test_a_sqlite_uri_naming_a_folder_is_refused(tmp_path: Path) -> None:
    message = refused(f"sqlite:///{tmp_path}")
    assert f"{tmp_path} is a folder, not a database file" in message


def test_a_folder_store_needs_mlflows_opt_in_and_then_a_writable_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    message = refused(f"file://{tmp_path}/mlruns")
    assert f"MLFLOW_ALLOW_FILE_STORE=true; give sqlite:///{tmp_path}/mlruns/mlflow.db" in message
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    check_tracking_uri(f"file://{tmp_path}/mlruns")
    (tmp_path / "a-file").write_text("")
    assert "is a file, not a folder" in refused(str(tmp_path / "a-file"))


def test_the_http_limits_are_mlflows_names_and_leave_the_users_values() -> None:
    for name in HTTP_LIMITS:
        assert getattr(mlflow.environment_variables, name).name == name
    environ = {"MLFLOW_HTTP_REQUEST_TIMEOUT": "300"}
    added = bound_http_retries(environ)
    assert "MLFLOW_HTTP_REQUEST_TIMEOUT" not in added
    assert environ == HTTP_LIMITS | {"MLFLOW_HTTP_REQUEST_TIMEOUT": "300"}
    assert bound_http_retries(environ) == {}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real MLflow server on loopback, light (one worker, no job runner: ~6 s to start),
    stopped by its process group."""
    folder = tmp_path_factory.mktemp("mlflow-server")
    port = _free_port()
    command = [
        str(Path(sys.executable).parent / "mlflow"),
        "server",
        "--workers",
        "1",
        "--backend-store-uri",
        f"sqlite:///{folder}/mlflow.db",
        "--default-artifact-root",
        (folder / "artifacts").as_uri(),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    env = os.environ | {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    log = (folder / "server.log").open("w")
    server = subprocess.Popen(
        command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=folder, start_new_session=True
    )
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=1) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            assert server.poll() is None, (folder / "server.log").read_text()
            assert time.monotonic() < deadline, "the MLflow server did not start in 120 s"
            time.sleep(0.2)
        yield uri
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()


@pytest.mark.slow
def test_a_real_mlflow_server_passes_and_a_wrong_path_on_it_does_not(mlflow_server: str) -> None:
    check_tracking_uri(mlflow_server)
    check_tracking_uri(mlflow_server + "/")
    message = refused(mlflow_server + "/mlflow")
    assert "the server answered HTTP 404" in message and "or the URI's path is wrong" in message
