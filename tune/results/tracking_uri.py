"""The check of a ``--tracking-uri`` before anything starts, and bounds on MLflow's HTTP
retries for the rest of the search: MLflow's own defaults retry an unreachable server for many
minutes, with no output, before a long traceback.

- ``http(s)``: MLflow's own client asks the server for one experiment, once, with no retries
  (the user's credentials and TLS settings apply); anything but an MLflow answer is refused.
- ``sqlite``: the database's folder must be writable, or creatable below a writable one
  (nothing is created here: MLflow creates it).
- ``file:`` or a plain path: MLflow 3.17 refuses a folder store unless
  ``MLFLOW_ALLOW_FILE_STORE=true``; with it, the folder is checked.
- ``databricks``, database and plugin schemes: accepted without a probe.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator, MutableMapping
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import requests
from mlflow.exceptions import MlflowException

from selmatch.core.config import ConfigError

# A tracking server on the network answers MLflow's smallest request in well under a second;
# this bounds the connection and, separately, the wait for the answer.
PROBE_TIMEOUT_S = 5.0
# What the search's own MLflow requests may cost when the server goes away mid-search, unless
# the environment sets them: 3 tries of at most 15 s each, 0 + 2 s apart (+ up to 1 s jitter),
# so under a minute a request. MLflow 3.17's defaults (7 retries, backoff factor 2, 120 s a
# try) wait many minutes for a server that does not answer.
HTTP_LIMITS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "15",
}
# The smallest request of MLflow's REST API; an MLflow 3.17 server answers it with a JSON object
# (``{"experiments": [...]}``), which a web server of another kind does not.
PROBE_ENDPOINT = "/api/2.0/mlflow/experiments/search"
_LEAVE_OUT = "leave --tracking-uri out to log to the SQLite store under --out"
# Schemes MLflow names without a host: nothing to probe from here.
_NOT_PROBED = ("databricks", "databricks-uc", "uc")


def check_tracking_uri(uri: str, *, timeout: float = PROBE_TIMEOUT_S) -> None:
    """Refuse, before anything starts, a ``--tracking-uri`` the search could not log to; one
    ``ConfigError`` line says what is wrong and what to do. ``http(s)://``: an MLflow server
    must answer ``PROBE_ENDPOINT`` within ``timeout`` seconds (MLflow's own request, with its
    credentials and TLS settings, no retries). ``sqlite:`` and folder stores: the folder must
    be writable, or creatable below a writable one; nothing is created. Other schemes MLflow
    knows (databricks, postgresql, mysql, mssql, uc, plugins) are accepted unprobed."""
    from mlflow.tracking._tracking_service.utils import _tracking_store_registry
    from mlflow.utils.uri import get_uri_scheme

    said = f"--tracking-uri {uri}"
    if not uri.strip():
        raise ConfigError(f"--tracking-uri is empty; give a URI, or {_LEAVE_OUT}")
    if uri in _NOT_PROBED:
        return
    try:
        scheme = get_uri_scheme(uri).lower()
        _tracking_store_registry.get_store_builder(uri)
    except MlflowException:
        raise ConfigError(
            f"{said}: unsupported scheme {urlsplit(uri).scheme!r}; give http(s)://HOST:PORT of "
            f"an MLflow server or sqlite:///PATH/mlflow.db, or {_LEAVE_OUT}"
        ) from None
    if scheme in ("http", "https"):
        _probe_server(uri, said, timeout)
    elif scheme == "sqlite":
        _check_sqlite(uri, said)
    elif scheme in ("", "file"):
        _check_folder_store(uri, said)


def bound_http_retries(environ: MutableMapping[str, str] = os.environ) -> dict[str, str]:
    """Set ``HTTP_LIMITS`` in ``environ`` where it does not set them already; returns what it
    set. MLflow reads them at every request."""
    added = {name: value for name, value in HTTP_LIMITS.items() if name not in environ}
    environ.update(added)
    return added


def _probe_server(uri: str, said: str, timeout: float) -> None:
    from mlflow.utils.credentials import get_default_host_creds
    from mlflow.utils.rest_utils import http_request

    parts = urlsplit(uri)
    try:
        port = parts.port or (443 if parts.scheme.lower() == "https" else 80)
    except ValueError:
        port = None
    if not parts.hostname or port is None:
        raise ConfigError(
            f"{said}: not a server address; give http(s)://HOST:PORT, or {_LEAVE_OUT}"
        )
    start = f"start the MLflow server, fix the URI, or {_LEAVE_OUT}"
    try:
        response = http_request(
            get_default_host_creds(uri),
            PROBE_ENDPOINT,
            "GET",
            max_retries=0,
            backoff_factor=0,
            timeout=timeout,
            raise_on_status=False,
            params={"max_results": 1},
        )
    except MlflowException as error:
        raise ConfigError(
            f"{said}: {_why_unreached(error, parts.hostname, port, timeout)}; {start}"
        ) from None
    code = response.status_code
    if code in (401, 403):
        raise ConfigError(
            f"{said}: the server refused access (HTTP {code}); set MLFLOW_TRACKING_USERNAME and "
            f"MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN), or {_LEAVE_OUT}"
        )
    if code != 200 or not isinstance(_json(response), dict):
        raise ConfigError(
            f"{said}: the server answered HTTP {code} to MLflow's {PROBE_ENDPOINT}, so it is not "
            f"an MLflow tracking server (or the URI's path is wrong); {start}"
        )


def _json(response: requests.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def _why_unreached(error: BaseException, host: str, port: int, timeout: float) -> str:
    """Why MLflow's request did not reach a server, from the exceptions behind ``error``."""
    chain = list(_causes(error))
    if any(isinstance(e, (requests.exceptions.Timeout, TimeoutError)) for e in chain):
        return f"no answer from {host}:{port} within {timeout:g} s (timeout)"
    dns = next((e for e in chain if isinstance(e, socket.gaierror)), None)
    if dns is not None:
        return f"host name {host!r} not found (DNS lookup failed: {dns.strerror})"
    if any(isinstance(e, ConnectionRefusedError) for e in chain):
        return f"connection refused at {host}:{port} (no server listens there)"
    if any(isinstance(e, requests.exceptions.SSLError) for e in chain):
        return (
            "TLS failed (set MLFLOW_TRACKING_SERVER_CERT_PATH for a private certificate "
            "authority, or MLFLOW_TRACKING_INSECURE_TLS=true)"
        )
    system = next((e for e in reversed(chain) if isinstance(e, OSError) and e.strerror), None)
    reason = system.strerror if system is not None else str(error).splitlines()[0]
    return f"cannot connect to {host}:{port} ({reason})"


def _causes(error: BaseException) -> Iterator[BaseException]:
    """``error`` and every exception behind it: causes, contexts, and what urllib3 and requests
    wrap (``reason``, ``args``)."""
    seen: set[int] = set()
    todo = [error]
    while todo:
        current = todo.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        inner = (
            current.__cause__,
            current.__context__,
            getattr(current, "reason", None),
            *current.args,
        )
        todo += [e for e in inner if isinstance(e, BaseException)]


def _check_sqlite(uri: str, said: str) -> None:
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        database = make_url(uri).database
    except ArgumentError:
        raise ConfigError(
            f"{said}: not a SQLite URI; give sqlite:///PATH/mlflow.db, or {_LEAVE_OUT}"
        ) from None
    if not database or database == ":memory:":
        return  # an in-memory store: nothing on disk to check
    path = Path(database)
    if path.is_dir():
        raise ConfigError(
            f"{said}: {path} is a folder, not a database file; give "
            f"sqlite:///{path}/mlflow.db, or {_LEAVE_OUT}"
        )
    if path.exists() and not os.access(path, os.R_OK | os.W_OK):
        raise ConfigError(
            f"{said}: cannot write the database {path} (permission denied); fix "
            f"its permissions or the URI, or {_LEAVE_OUT}"
        )
    _check_writable_folder(path.parent, said)


def _check_folder_store(uri: str, said: str) -> None:
    from mlflow.environment_variables import MLFLOW_ALLOW_FILE_STORE

    folder = Path(unquote(urlsplit(uri).path) if uri.lower().startswith("file:") else uri)
    if not MLFLOW_ALLOW_FILE_STORE.get():
        raise ConfigError(
            f"{said}: a folder store (MLflow's file store) is refused by MLflow 3.17 unless "
            f"MLFLOW_ALLOW_FILE_STORE=true; give sqlite:///{folder}/mlflow.db, or {_LEAVE_OUT}"
        )
    _check_writable_folder(folder, said)


def _check_writable_folder(folder: Path, said: str) -> None:
    """``folder`` is, or can be made below, a folder this process may write in."""
    existing = next(p for p in (folder, *folder.parents) if p.exists() or p.is_symlink())
    if not existing.is_dir():
        where = "is" if existing == folder else f"lies below {existing}, which is"
        raise ConfigError(
            f"{said}: the store's folder {folder} {where} a file, not a folder; "
            f"fix the URI, or {_LEAVE_OUT}"
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(
            f"{said}: cannot write in {existing} (permission denied), where the "
            f"store's folder {folder} would be; fix the URI, or {_LEAVE_OUT}"
        )
