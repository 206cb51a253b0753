"""A local Prefect server that outlives one command: ``segflow server start|status|stop``.

With no server configured, every flow run of a new process makes Prefect start a
temporary server (~10-16 s on a 2-core machine). ``start`` launches ``prefect server
start`` on the loopback interface once, in the background, and remembers its URL and
process id in ``$SEGFLOW_HOME/server.json`` (default ``~/.segflow``); later runs find
it there (see :func:`flows.runtime.use_prefect_server`).

Only the standard library is imported here: ``segflow server status`` and the choice of
a server before Prefect is imported must stay cheap.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

from segflow.errors import ConfigError

HOST = "127.0.0.1"
START_TIMEOUT_S = 120.0  # a first start on a loaded 2-core machine migrates its database
STOP_TIMEOUT_S = 15.0
HEALTH_TIMEOUT_S = 2.0


@dataclass(frozen=True)
class ServerRecord:
    """What ``start`` remembers about the server it launched."""

    url: str  # the API URL, what PREFECT_API_URL takes
    pid: int
    port: int
    log: str
    started: float  # epoch seconds

    @property
    def ui_url(self) -> str:
        return self.url.removesuffix("/api")


def segflow_home() -> Path:
    """``$SEGFLOW_HOME``, else ``~/.segflow``."""
    return Path(os.environ.get("SEGFLOW_HOME") or Path.home() / ".segflow").expanduser()


def state_file() -> Path:
    return segflow_home() / "server.json"


def remembered() -> ServerRecord | None:
    """The record ``start`` left, alive or not; None when there is none (or it is unreadable)."""
    try:
        data = json.loads(state_file().read_text(encoding="utf-8"))
        return ServerRecord(**data)
    except (OSError, ValueError, TypeError):
        return None


def running() -> ServerRecord | None:
    """The remembered server when its process lives and its API answers, else None."""
    record = remembered()
    if record is None or not _is_our_process(record.pid) or not is_healthy(record.url):
        return None
    return record


def is_healthy(url: str, timeout: float = HEALTH_TIMEOUT_S) -> bool:
    """Whether ``url/health`` answers 200 (the Prefect API is up)."""
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=timeout) as response:
            return bool(response.status == 200)
    except (OSError, ValueError):
        return False


def start(port: int | None = None, *, timeout: float = START_TIMEOUT_S) -> ServerRecord:
    """Launch ``prefect server start`` in the background and wait until its API answers.

    A server that is already running is returned as it is. A start that fails or times
    out stops its process and raises a ConfigError naming the log file.
    """
    current = running()
    if current is not None:
        return current
    chosen = port or free_port()
    home = segflow_home()
    home.mkdir(parents=True, exist_ok=True)
    log = home / "server.log"
    process = _launch(chosen, log)
    url = f"http://{HOST}:{chosen}/api"
    record = ServerRecord(url, process.pid, chosen, str(log), time.time())
    try:
        _wait_healthy(process, record, timeout)
    except BaseException:
        _terminate(process.pid)
        raise
    _write_record(record)
    return record


def stop(*, timeout: float = STOP_TIMEOUT_S) -> ServerRecord | None:
    """Stop the remembered server (if it still runs) and forget it; returns what was stopped."""
    record = remembered()
    if record is None:
        return None
    if _is_our_process(record.pid):
        _terminate(record.pid, timeout)
    state_file().unlink(missing_ok=True)
    return record


def free_port() -> int:
    """A TCP port on the loopback interface that nothing listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


def _launch(port: int, log: Path) -> subprocess.Popen[bytes]:
    if _port_taken(port):
        raise ConfigError(f"port {port} on {HOST} is in use; pick another with --port")
    env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)  # the server is not a client of another one
    command = [*_prefect_command(), "server", "start", "--host", HOST, "--port", str(port)]
    with log.open("wb") as sink:  # the log of the latest start
        # a session of its own: the server survives the command, and stop() ends its group
        return subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )


def _prefect_command() -> list[str]:
    script = Path(sys.executable).with_name("prefect")
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-c", "import sys; from prefect.cli import app; sys.exit(app())"]


def _port_taken(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.settimeout(0.5)
        return probe.connect_ex((HOST, port)) == 0


def _wait_healthy(process: subprocess.Popen[bytes], record: ServerRecord, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ConfigError(
                f"prefect server exited with code {process.returncode} while starting; "
                f"see {record.log}"
            )
        if is_healthy(record.url, timeout=1.0):
            return
        time.sleep(0.25)
    raise ConfigError(f"prefect server did not answer within {timeout:.0f} s; see {record.log}")


def _write_record(record: ServerRecord) -> None:
    target = state_file()
    partial = target.with_suffix(".tmp")
    partial.write_text(json.dumps(asdict(record), indent=2) + "\n", encoding="utf-8")
    partial.replace(target)  # readers never see half a file


def _is_our_process(pid: int) -> bool:
    """Whether ``pid`` lives and (where /proc tells) still runs a Prefect server:
    a remembered pid may have been reused by another program since."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False  # someone else's process now
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
    except OSError:
        return True  # no /proc (macOS): the pid check is all there is
    return b"prefect" in cmdline and b"server" in cmdline


def _terminate(pid: int, timeout: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM the server's process group (uvicorn and its services), SIGKILL if it lingers."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        except PermissionError:
            os.kill(pid, sig)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not _exists(pid):
                return
            time.sleep(0.1)


def _exists(pid: int) -> bool:
    try:
        reaped, _ = os.waitpid(pid, os.WNOHANG)  # our own child: reap it, or it stays a zombie
        if reaped == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


__all__ = [
    "ServerRecord",
    "free_port",
    "is_healthy",
    "remembered",
    "running",
    "segflow_home",
    "start",
    "state_file",
    "stop",
]
