#!/usr/bin/env python3
"""moto's standalone S3 server on 127.0.0.1, for tests and developers.

    python scripts/locals3.py start    # start in the background; prints the endpoint URL
    python scripts/locals3.py status   # is it answering?
    python scripts/locals3.py stop

or, from Python (the test fixtures do this)::

    with S3Server() as s3:
        use(s3.endpoint)                # "http://127.0.0.1:<port>"

The server is ``moto_server`` from the running interpreter's environment (the
``moto[server]`` extra), or ``python -m moto.server`` where that script is
missing. Any access key and secret are accepted; use region us-east-1.
Standard library only (moto itself runs in the child process).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


class S3Error(RuntimeError):
    """The local S3 server could not be started; the message says why."""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _server_cmd(port: int) -> list[str]:
    script = Path(sys.executable).parent / "moto_server"
    if script.exists():
        return [str(script), "-H", "127.0.0.1", "-p", str(port)]
    return [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]


def answers(endpoint: str, timeout: float = 2.0) -> bool:
    """Whether an S3 server at ``endpoint`` answers a ListBuckets request."""
    try:
        with urllib.request.urlopen(endpoint.rstrip("/") + "/", timeout=timeout) as resp:
            return resp.status == 200 and b"ListAllMyBucketsResult" in resp.read()
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _die_with_parent() -> None:
    """In the child before exec: get SIGKILL when the parent dies (Linux), own session."""
    os.setsid()
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class S3Server:
    """One moto S3 server on a free port of 127.0.0.1; a context manager.

    Its output goes to ``log_path``, or to a temporary file removed on stop.
    """

    def __init__(
        self,
        start_timeout: float = 60.0,
        attempts: int = 3,
        die_with_parent: bool = True,
        log_path: Path | None = None,
    ) -> None:
        self.start_timeout = start_timeout
        self.log_path = log_path
        self.attempts = attempts
        self.die_with_parent = die_with_parent
        self.port: int | None = None
        self.proc: subprocess.Popen | None = None
        self.log: Path | None = None
        self.start_seconds: float | None = None

    @property
    def endpoint(self) -> str:
        if self.port is None:
            raise S3Error("the S3 server is not started")
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> S3Server:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> str:
        """Start, retrying up to ``attempts`` times on a new port; returns the endpoint URL."""
        if self.proc is not None:
            return self.endpoint
        began = time.monotonic()
        failures = []
        for attempt in range(1, self.attempts + 1):
            try:
                self._start_once()
                self.start_seconds = time.monotonic() - began
                return self.endpoint
            except S3Error as exc:
                failures.append(f"attempt {attempt}: {exc}")
                self.stop()
        raise S3Error("moto's S3 server did not start:\n" + "\n".join(failures))

    def _start_once(self) -> None:
        self.port = _free_port()
        if self.log_path is None:
            fd, log = tempfile.mkstemp(prefix="preannotate-s3-", suffix=".log")
            os.close(fd)
            self.log = Path(log)
        else:
            self.log = self.log_path
            self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                _server_cmd(self.port),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent if self.die_with_parent else None,
                start_new_session=not self.die_with_parent,
            )
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise S3Error(
                    f"moto_server exited with code {self.proc.returncode}; is moto[server]"
                    f" installed in {sys.prefix}? Its output:\n{self._log_tail()}"
                )
            if answers(self.endpoint):
                return
            time.sleep(0.1)
        raise S3Error(
            f"moto_server did not answer on {self.endpoint} within {self.start_timeout:.0f} s;"
            f" its output:\n{self._log_tail()}"
        )

    def _log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log.read_text(errors="replace") if self.log else ""
        except OSError:
            text = ""
        return "\n".join("    " + line for line in text.splitlines()[-lines:]) or "    (none)"

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM, wait up to ``grace`` seconds, then SIGKILL; removes the log."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if self.log is not None and self.log_path is None:
            self.log.unlink(missing_ok=True)
        self.proc, self.port, self.log = None, None, None


# --------------------------------------------------------------------------- CLI


def _state_file() -> Path:
    return ROOT / ".cache" / "s3.json"


def _read_state() -> dict | None:
    try:
        return json.loads(_state_file().read_text())
    except (OSError, ValueError):
        return None


def _is_our_server(pid: int, port: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return any(b"moto" in part for part in cmdline) and str(port).encode() in cmdline


def _cmd_start(ns: argparse.Namespace) -> int:
    state = _read_state()
    if state and _is_our_server(state["pid"], state["port"]):
        print(state["endpoint"])
        print(f"already running (pid {state['pid']})", file=sys.stderr)
        return 0
    server = S3Server(die_with_parent=False, log_path=_state_file().with_suffix(".log"))
    server.start()
    assert server.proc is not None
    _state_file().parent.mkdir(parents=True, exist_ok=True)
    state = {"pid": server.proc.pid, "port": server.port, "endpoint": server.endpoint}
    _state_file().write_text(json.dumps(state))
    print(server.endpoint)
    print(
        f"moto S3 started in {server.start_seconds:.1f} s (pid {server.proc.pid});"
        " stop with: python scripts/locals3.py stop",
        file=sys.stderr,
    )
    return 0


def _cmd_status(ns: argparse.Namespace) -> int:
    state = _read_state()
    if not state or not _is_our_server(state["pid"], state["port"]):
        print("not running", file=sys.stderr)
        return 1
    up = answers(state["endpoint"])
    print(state["endpoint"])
    print(f"pid {state['pid']}: {'answering' if up else 'NOT answering'}", file=sys.stderr)
    return 0 if up else 1


def _cmd_stop(ns: argparse.Namespace) -> int:
    state = _read_state()
    if state and _is_our_server(state["pid"], state["port"]):
        os.kill(state["pid"], signal.SIGTERM)
        for _ in range(100):
            if not _is_our_server(state["pid"], state["port"]):
                break
            time.sleep(0.1)
        else:
            with contextlib.suppress(ProcessLookupError):
                os.kill(state["pid"], signal.SIGKILL)
        print(f"stopped (pid {state['pid']})", file=sys.stderr)
    else:
        print("not running", file=sys.stderr)
    _state_file().unlink(missing_ok=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("start", help="start in the background; prints the endpoint").set_defaults(
        fn=_cmd_start
    )
    sub.add_parser("status", help="exit 0 if the server answers").set_defaults(fn=_cmd_status)
    sub.add_parser("stop", help="stop the background server").set_defaults(fn=_cmd_stop)
    ns = parser.parse_args(argv)
    try:
        return ns.fn(ns)
    except S3Error as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
