#!/usr/bin/env python3
"""A real Apache Kafka broker (KRaft, one node) on 127.0.0.1, for tests and developers.

    python scripts/localkafka.py fetch    # jars from Maven Central into the cache (once)
    python scripts/localkafka.py start    # start in the background; prints the bootstrap
    python scripts/localkafka.py status   # is the background broker answering?
    python scripts/localkafka.py stop     # stop it and remove its data

or, from Python (the test fixtures do this)::

    with KafkaBroker() as broker:
        use(broker.bootstrap)             # "127.0.0.1:<port>"

The jars come from ``scripts/kafka/pom.xml`` through ``mvn
dependency:copy-dependencies`` into ``$PREANNOTATE_KAFKA_CACHE/<version>/libs``
(default ``<repo>/.cache/kafka``). A start formats fresh KRaft storage in a new
temporary folder (``StorageTool format --standalone``), runs one combined
broker and controller on free ports, and waits until the broker lists itself
in a Metadata response over the wire. Standard library only.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
KAFKA_DIR = Path(__file__).resolve().parent / "kafka"
POM = KAFKA_DIR / "pom.xml"
LOG4J_CONFIG = KAFKA_DIR / "log4j2.properties"

#: The Kafka release the pom pins; PREANNOTATE_KAFKA_VERSION picks another 4.x.
DEFAULT_VERSION = "4.1.1"
DEFAULT_HEAP = "512m"
NODE_ID = 1

# JVM flags for a short-lived test broker on a small, shared machine: a fixed
# small heap, the serial collector (no GC threads to compete with), and the
# client compiler only (faster start, less JIT work; peak speed does not matter).
JVM_FLAGS = (
    "-XX:+UseSerialGC",
    "-XX:TieredStopAtLevel=1",
    "-XX:-UsePerfData",
    "-Djava.awt.headless=true",
)


class KafkaError(RuntimeError):
    """The local broker could not be fetched, started or stopped; the message says why."""


# --------------------------------------------------------------------------- paths


def cache_root() -> Path:
    return Path(os.environ.get("PREANNOTATE_KAFKA_CACHE") or ROOT / ".cache" / "kafka")


def kafka_version() -> str:
    return os.environ.get("PREANNOTATE_KAFKA_VERSION") or DEFAULT_VERSION


def libs_dir(version: str | None = None) -> Path:
    return cache_root() / (version or kafka_version()) / "libs"


def _state_file() -> Path:
    return cache_root() / "broker.json"


def _java() -> str:
    home = os.environ.get("JAVA_HOME")
    if home and (Path(home) / "bin" / "java").exists():
        return str(Path(home) / "bin" / "java")
    found = shutil.which("java")
    if not found:
        raise KafkaError("no `java` on PATH and no JAVA_HOME: Kafka 4 needs Java 17 or newer")
    return found


# --------------------------------------------------------------------------- fetch


def _fetch_key(version: str) -> str:
    digest = hashlib.sha256(POM.read_bytes()).hexdigest()[:16]
    return f"{version} {digest}\n"


def is_fetched(version: str | None = None) -> bool:
    version = version or kafka_version()
    stamp = libs_dir(version) / ".fetched"
    return stamp.is_file() and stamp.read_text() == _fetch_key(version)


def fetch(version: str | None = None, *, quiet: bool = True) -> Path:
    """Bring the broker's jars into the cache unless they are there; returns the libs folder."""
    version = version or kafka_version()
    libs = libs_dir(version)
    if is_fetched(version):
        return libs
    mvn = shutil.which("mvn")
    if not mvn:
        raise KafkaError("no `mvn` on PATH: Maven fetches Kafka's jars from Maven Central")
    libs.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix="libs-", dir=libs.parent))
    cmd = [
        mvn,
        *(["-q"] if quiet else []),
        "-B",
        "-f",
        str(POM),
        f"-Dkafka.version={version}",
        "dependency:copy-dependencies",
        "-DincludeScope=runtime",
        f"-DoutputDirectory={staging}",
    ]
    try:
        proc = subprocess.run(cmd, capture_output=quiet, text=True, timeout=1200, check=False)
        if proc.returncode != 0:
            out = (proc.stdout or "") + (proc.stderr or "")
            raise KafkaError(
                f"fetching Kafka {version} with Maven failed (exit {proc.returncode}):\n"
                f"  {' '.join(cmd)}\n{_tail(out, 30)}"
            )
        if not any(staging.glob("kafka_2.13-*.jar")):
            raise KafkaError(f"Maven ran but brought no kafka_2.13 jar into {staging}")
        (staging / ".fetched").write_text(_fetch_key(version))
        staging.chmod(0o755)  # mkdtemp made it private
        if libs.exists():
            shutil.rmtree(libs)
        staging.rename(libs)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return libs


# --------------------------------------------------------------------------- the wire


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("broker closed the connection")
        buf += chunk
    return bytes(buf)


def _call(sock: socket.socket, api_key: int, version: int, corr: int, body: bytes) -> bytes:
    """One request with a v1 header (non-flexible versions only); returns the response body."""
    client_id = b"preannotate-localkafka"
    header = struct.pack(">hhih", api_key, version, corr, len(client_id)) + client_id
    sock.sendall(struct.pack(">i", len(header) + len(body)) + header + body)
    (size,) = struct.unpack(">i", _recv_exact(sock, 4))
    data = _recv_exact(sock, size)
    (got,) = struct.unpack(">i", data[:4])
    if got != corr:
        raise ConnectionError(f"correlation id {got} != {corr}")
    return data[4:]


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def take(self, fmt: str):
        value = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += struct.calcsize(fmt)
        return value[0]

    def string(self) -> str | None:
        n = self.take(">h")
        if n < 0:
            return None
        value = self.data[self.pos : self.pos + n].decode()
        self.pos += n
        return value


def probe(host: str, port: int, timeout: float = 3.0) -> list[tuple[int, str, int]]:
    """The brokers a Metadata request to ``host:port`` lists, as (node id, host, port).

    KRaft lists only registered, unfenced brokers, so a non-empty answer means
    the broker takes produce and fetch requests. Raises ``OSError`` when it
    does not answer (yet).
    """
    metadata_key = 3
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.settimeout(timeout)
        # ApiVersions v0 is answered by every broker, even before it serves anything else.
        resp = _Reader(_call(sock, 18, 0, 1, b""))
        error = resp.take(">h")
        if error:
            raise ConnectionError(f"ApiVersions error code {error}")
        ranges = {}
        for _ in range(resp.take(">i")):
            key, lo, hi = resp.take(">h"), resp.take(">h"), resp.take(">h")
            ranges[key] = (lo, hi)
        lo, hi = ranges.get(metadata_key, (0, -1))
        version = max(lo, 4)
        if version > min(hi, 8):  # v9 and up use the flexible encoding
            raise KafkaError(f"broker offers Metadata v{lo}..v{hi}; this probe speaks v4..v8")
        # topics: empty array (no topics), allow_auto_topic_creation=false, [v8: two flags]
        body = struct.pack(">ib", 0, 0) + (b"\x00\x00" if version >= 8 else b"")
        meta = _Reader(_call(sock, metadata_key, version, 2, body))
        meta.take(">i")  # throttle_time_ms
        brokers = []
        for _ in range(meta.take(">i")):
            node, bhost, bport = meta.take(">i"), meta.string(), meta.take(">i")
            meta.string()  # rack
            brokers.append((node, bhost or "", bport))
        return brokers


def answers(bootstrap: str, timeout: float = 3.0) -> bool:
    """Whether a broker at ``host:port`` lists at least one live broker."""
    host, _, port = bootstrap.rpartition(":")
    try:
        return bool(probe(host, int(port), timeout))
    except (OSError, ValueError, struct.error):
        return False


# --------------------------------------------------------------------------- start / stop


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cluster_id() -> str:
    """A Kafka Uuid in its string form, as ``StorageTool random-uuid`` prints it.

    16 random bytes, base64url without padding; Kafka refuses ids that start with
    '-' (they look like options) and the all-zero id. Made here rather than by
    that tool: it saves a JVM start (about a second) on every broker start.
    """
    while True:
        raw = os.urandom(16)
        text = base64.urlsafe_b64encode(raw).decode().rstrip("=")
        if not text.startswith("-") and any(raw):
            return text


def server_properties(data_dir: Path, port: int, controller_port: int) -> str:
    props = {
        "process.roles": "broker,controller",
        "node.id": NODE_ID,
        "controller.quorum.bootstrap.servers": f"127.0.0.1:{controller_port}",
        "listeners": f"PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}",
        "advertised.listeners": f"PLAINTEXT://127.0.0.1:{port}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        "log.dirs": data_dir / "logs",
        "metadata.log.dir": data_dir / "metadata",
        "auto.create.topics.enable": "false",
        "num.partitions": 1,
        "default.replication.factor": 1,
        "offsets.topic.replication.factor": 1,
        "offsets.topic.num.partitions": 1,
        "transaction.state.log.replication.factor": 1,
        "transaction.state.log.min.isr": 1,
        "transaction.state.log.num.partitions": 1,
        "share.coordinator.state.topic.replication.factor": 1,
        "share.coordinator.state.topic.min.isr": 1,
        "group.initial.rebalance.delay.ms": 0,
        # The cleaner's dedupe buffer is 128 MB by default: too much for a small heap.
        "log.cleaner.dedupe.buffer.size": 16 * 1024 * 1024,
        "log.cleaner.threads": 1,
        "num.network.threads": 2,
        "num.io.threads": 2,
        "num.recovery.threads.per.data.dir": 1,
        "background.threads": 2,
    }
    return "".join(f"{k}={v}\n" for k, v in props.items())


def _tail(text: str, lines: int = 40) -> str:
    text = re.sub(r"\x1b\[[0-9;]*m", "", text)  # Maven colours its output even with -B
    return "\n".join("    " + line for line in text.splitlines()[-lines:] if line.strip())


def _log_tail(path: Path, lines: int = 40) -> str:
    try:
        return _tail(path.read_text(errors="replace"), lines)
    except OSError:
        return "    (no log)"


def _die_with_parent() -> None:
    """In the child before exec: get SIGKILL when the parent dies (Linux), own session."""
    os.setsid()
    with contextlib.suppress(Exception):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _is_our_broker(pid: int, data_dir: str) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False
    return "kafka.Kafka" in cmdline and data_dir in cmdline


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # an exited child of someone else stays a zombie until reaped
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return True


def terminate(pid: int, grace: float = 20.0, proc: subprocess.Popen | None = None) -> None:
    """SIGTERM (a controlled shutdown), wait up to ``grace`` seconds, then SIGKILL."""

    def gone(wait: float) -> bool:
        if proc is not None:
            try:
                proc.wait(wait)
                return True
            except subprocess.TimeoutExpired:
                return False
        end = time.monotonic() + wait
        while time.monotonic() < end:
            if not _alive(pid):
                return True
            time.sleep(0.1)
        return not _alive(pid)

    if gone(0):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    if gone(grace):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    gone(10)


class KafkaBroker:
    """One Kafka broker+controller on 127.0.0.1 with fresh storage; a context manager.

    ``die_with_parent`` (the default) has the kernel kill the broker if this
    Python process dies without stopping it, so a killed test run leaves no
    Java behind; the CLI's background ``start`` turns it off.
    """

    def __init__(
        self,
        version: str | None = None,
        heap: str = DEFAULT_HEAP,
        start_timeout: float = 60.0,
        attempts: int = 3,
        die_with_parent: bool = True,
    ) -> None:
        self.version = version or kafka_version()
        self.heap = heap
        self.start_timeout = start_timeout
        self.attempts = attempts
        self.die_with_parent = die_with_parent
        self.port: int | None = None
        self.data_dir: Path | None = None
        self.proc: subprocess.Popen | None = None
        self.start_seconds: float | None = None

    @property
    def bootstrap(self) -> str:
        if self.port is None:
            raise KafkaError("the broker is not started")
        return f"127.0.0.1:{self.port}"

    def __enter__(self) -> KafkaBroker:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> str:
        """Fetch if needed, then start, retrying up to ``attempts`` times; returns the bootstrap."""
        if self.proc is not None:
            return self.bootstrap
        libs = fetch(self.version)
        failures = []
        began = time.monotonic()
        for attempt in range(1, self.attempts + 1):
            try:
                self._start_once(libs)
                self.start_seconds = time.monotonic() - began
                return self.bootstrap
            except KafkaError as exc:
                failures.append(f"attempt {attempt}: {exc}")
                self._cleanup()
        raise KafkaError(
            f"Kafka {self.version} did not start in {self.attempts} attempts:\n"
            + "\n".join(failures)
        )

    def _java_cmd(self, libs: Path, *args: str, heap: str) -> list[str]:
        return [
            _java(),
            f"-Xms{heap}",
            f"-Xmx{heap}",
            *JVM_FLAGS,
            f"-Dlog4j2.configurationFile={LOG4J_CONFIG}",
            "-cp",
            f"{libs}/*",
            *args,
        ]

    def _start_once(self, libs: Path) -> None:
        self.data_dir = Path(tempfile.mkdtemp(prefix="preannotate-kafka-"))
        self.port, controller_port = free_port(), free_port()
        while controller_port == self.port:
            controller_port = free_port()
        config = self.data_dir / "server.properties"
        config.write_text(server_properties(self.data_dir, self.port, controller_port))
        log = self.data_dir / "broker.log"

        fmt = self._java_cmd(
            libs,
            "kafka.tools.StorageTool",
            "format",
            "--standalone",
            "-t",
            cluster_id(),
            "-c",
            str(config),
            heap="128m",
        )
        try:
            done = subprocess.run(fmt, capture_output=True, text=True, timeout=60, check=False)
        except subprocess.TimeoutExpired as exc:
            raise KafkaError("formatting KRaft storage took over 60 s") from exc
        if done.returncode != 0:
            raise KafkaError(
                f"formatting KRaft storage failed (exit {done.returncode}):\n"
                + _tail(done.stdout + done.stderr)
            )

        cmd = self._java_cmd(libs, "kafka.Kafka", str(config), heap=self.heap)
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent if self.die_with_parent else None,
                start_new_session=not self.die_with_parent,
            )
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise KafkaError(
                    f"the broker exited with code {self.proc.returncode} while starting;"
                    f" its log ({log}):\n{_log_tail(log)}"
                )
            if answers(self.bootstrap, timeout=2.0):
                return
            time.sleep(0.2)
        raise KafkaError(
            f"the broker did not answer on {self.bootstrap} within {self.start_timeout:.0f} s;"
            f" its log:\n{_log_tail(log)}"
        )

    def _cleanup(self) -> None:
        if self.proc is not None:
            terminate(self.proc.pid, grace=5.0, proc=self.proc)
        if self.data_dir is not None:
            shutil.rmtree(self.data_dir, ignore_errors=True)
        self.proc, self.port, self.data_dir = None, None, None

    def stop(self, grace: float = 20.0) -> None:
        """SIGTERM, wait up to ``grace`` seconds, SIGKILL; then remove the data folder."""
        if self.proc is not None:
            terminate(self.proc.pid, grace=grace, proc=self.proc)
        self._cleanup()


# --------------------------------------------------------------------------- CLI


def _read_state() -> dict | None:
    try:
        return json.loads(_state_file().read_text())
    except (OSError, ValueError):
        return None


def _cmd_fetch(ns: argparse.Namespace) -> int:
    version = kafka_version()
    if is_fetched(version) and not ns.force:
        print(f"Kafka {version} already fetched: {libs_dir(version)}", file=sys.stderr)
        return 0
    if ns.force:
        shutil.rmtree(libs_dir(version), ignore_errors=True)
    began = time.monotonic()
    libs = fetch(version, quiet=not ns.verbose)
    jars = len(list(libs.glob("*.jar")))
    print(
        f"fetched Kafka {version}: {jars} jars in {libs} ({time.monotonic() - began:.1f} s)",
        file=sys.stderr,
    )
    return 0


def _cmd_start(ns: argparse.Namespace) -> int:
    state = _read_state()
    if state and _is_our_broker(state["pid"], state["data_dir"]):
        print(state["bootstrap"])
        print(f"already running (pid {state['pid']})", file=sys.stderr)
        return 0
    broker = KafkaBroker(heap=ns.heap, die_with_parent=False)
    broker.start()
    assert broker.proc is not None and broker.data_dir is not None
    _state_file().parent.mkdir(parents=True, exist_ok=True)
    _state_file().write_text(
        json.dumps(
            {
                "pid": broker.proc.pid,
                "bootstrap": broker.bootstrap,
                "data_dir": str(broker.data_dir),
                "version": broker.version,
            }
        )
    )
    print(broker.bootstrap)
    print(
        f"Kafka {broker.version} started in {broker.start_seconds:.1f} s (pid {broker.proc.pid},"
        f" data {broker.data_dir}); stop with: python scripts/localkafka.py stop",
        file=sys.stderr,
    )
    return 0


def _cmd_status(ns: argparse.Namespace) -> int:
    state = _read_state()
    if not state or not _is_our_broker(state["pid"], state["data_dir"]):
        print("not running", file=sys.stderr)
        return 1
    up = answers(state["bootstrap"])
    print(state["bootstrap"])
    print(f"pid {state['pid']}: {'answering' if up else 'NOT answering'}", file=sys.stderr)
    return 0 if up else 1


def _cmd_stop(ns: argparse.Namespace) -> int:
    state = _read_state()
    if not state:
        print("not running", file=sys.stderr)
        return 0
    if _is_our_broker(state["pid"], state["data_dir"]):
        terminate(state["pid"])
    shutil.rmtree(state["data_dir"], ignore_errors=True)
    _state_file().unlink(missing_ok=True)
    print(f"stopped (pid {state['pid']})", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("fetch", help="download the broker's jars (skipped when present)")
    p.add_argument("--force", action="store_true", help="fetch again even if present")
    p.add_argument("--verbose", action="store_true", help="show Maven's output")
    p.set_defaults(fn=_cmd_fetch)
    p = sub.add_parser("start", help="start a broker in the background; prints its bootstrap")
    p.add_argument("--heap", default=DEFAULT_HEAP, help=f"JVM heap (default {DEFAULT_HEAP})")
    p.set_defaults(fn=_cmd_start)
    sub.add_parser("status", help="exit 0 if the background broker answers").set_defaults(
        fn=_cmd_status
    )
    sub.add_parser("stop", help="stop the background broker").set_defaults(fn=_cmd_stop)
    ns = parser.parse_args(argv)
    try:
        return ns.fn(ns)
    except KafkaError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
