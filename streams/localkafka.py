"""A real, local, single-node Apache Kafka broker started by the project (no Docker).

Imperative shell around three steps:

1. :func:`ensure_jars` fetches the broker's jars from Maven Central with ``mvn``
   (``deploy/kafka/pom.xml`` pins ``org.apache.kafka:kafka_2.13:4.0.0`` plus a log4j2
   binding) into a cache outside the repository, once.
2. :meth:`LocalKafka.start` renders ``deploy/kafka/server.properties.template`` into the
   data directory, formats the KRaft storage on first use and launches ``kafka.Kafka``
   as a detached JVM, then waits until the broker answers a metadata request.
3. :meth:`LocalKafka.stop` sends SIGTERM (controlled shutdown), SIGKILL as a fallback.

The pid and ports live in a JSON state file in the data directory, so ``voltguard kafka
down`` / ``status`` work from another process and starting twice reuses the running
broker.

Examples
--------
>>> kafka = LocalKafka(Path("/tmp/vg-kafka"))  # doctest: +SKIP
>>> kafka.start()  # doctest: +SKIP
'127.0.0.1:39411'
>>> kafka.stop()  # doctest: +SKIP
True
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections import deque
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "DEPLOY_DIR",
    "KAFKA_VERSION",
    "KafkaError",
    "KafkaSetupError",
    "KafkaStartError",
    "LocalKafka",
    "default_cache_dir",
    "default_data_dir",
    "ensure_jars",
    "find_free_port",
    "java_major_version",
]

log = logging.getLogger(__name__)

KAFKA_VERSION = "4.0.0"
"""Kafka release pinned in ``deploy/kafka/pom.xml`` (faust/aiokafka are tested against it)."""

MIN_JAVA = 17
"""Oldest Java major version that runs Kafka 4.0 brokers."""

DEPLOY_DIR = Path(__file__).resolve().parents[1] / "deploy" / "kafka"
"""``deploy/kafka`` in the repository (the project is installed editable)."""

LOOPBACK = "127.0.0.1"
STATE_FILE = "state.json"
CONFIG_FILE = "server.properties"
LOG_SUBDIR = "logs"
DATA_SUBDIR = "data"
SERVER_LOG = "server.log"
CONSOLE_LOG = "console.out"
_MARKER = ".complete"
_LOG_TAIL = 40

# Executed by the interpreter between fork and exec of the JVM when the broker should die
# with the process that started it (tests): asks Linux to SIGTERM it when its parent goes.
_PDEATHSIG_SHIM = (
    "import ctypes, os, sys\n"
    "ctypes.CDLL(None, use_errno=True).prctl(1, 15)  # PR_SET_PDEATHSIG, SIGTERM\n"
    "if os.getppid() != int(sys.argv[1]):\n"
    "    sys.exit('parent already gone')\n"
    "os.execv(sys.argv[2], sys.argv[2:])\n"
)


class KafkaError(RuntimeError):
    """Base class of the local Kafka errors."""


class KafkaSetupError(KafkaError):
    """Java or Maven is missing or too old, or fetching the jars failed."""


class KafkaStartError(KafkaError):
    """The broker did not start (its log tail is part of the message)."""


def default_cache_dir() -> Path:
    """Return the jar cache directory.

    Returns
    -------
    Path
        ``$VOLTGUARD_CACHE_DIR`` if set, else ``~/.cache/voltguard``.
    """
    env = os.environ.get("VOLTGUARD_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "voltguard"


def default_data_dir() -> Path:
    """Return the broker's default data directory.

    Returns
    -------
    Path
        ``$VOLTGUARD_KAFKA_DIR`` if set, else ``~/.local/state/voltguard/kafka``.
    """
    env = os.environ.get("VOLTGUARD_KAFKA_DIR")
    return (
        Path(env).expanduser() if env else Path.home() / ".local" / "state" / "voltguard" / "kafka"
    )


def find_free_port(host: str = LOOPBACK) -> int:
    """Return a TCP port that is free on ``host`` right now.

    Parameters
    ----------
    host : str
        Interface to probe, loopback by default.

    Returns
    -------
    int
        A port the kernel handed out for an ephemeral bind (it may be taken again later).
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _port_is_free(host: str, port: int) -> bool:
    """Tell whether ``port`` can be bound on ``host`` (SO_REUSEADDR, like Kafka)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def _accepts_tcp(host: str, port: int, timeout_s: float = 0.25) -> bool:
    """Tell whether something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def _tail(path: Path, lines: int) -> list[str]:
    """Return the last ``lines`` lines of a text file (empty if it does not exist)."""
    try:
        with path.open(encoding="utf-8", errors="replace") as fh:
            return [line.rstrip("\n") for line in deque(fh, maxlen=lines)]
    except FileNotFoundError:
        return []


_LOG_RECORD = re.compile(r"^\[\d{4}-\d\d-\d\d [^]]*\] (\w+) ")


def _log_errors(path: Path, offset: int = 0, limit: int = 20) -> list[str]:
    """Return the ERROR/FATAL records of a Kafka log with their exception and cause lines.

    Stack frames are left out, so that ``Caused by: java.net.BindException: Address
    already in use`` survives the 40-line tail being filled by shutdown chatter.

    Parameters
    ----------
    path : Path
        The log file.
    offset : int
        Byte offset where the current run's records start (0 if the file is shorter,
        i.e. it rolled over meanwhile).
    limit : int
        Keep the last ``limit`` lines found.

    Returns
    -------
    list of str
        Error records and their indented exception lines.
    """
    found: list[str] = []
    in_error = False
    try:
        with path.open("rb") as fh:
            if offset <= path.stat().st_size:
                fh.seek(offset)
            for raw_bytes in fh:
                raw = raw_bytes.decode("utf-8", errors="replace")
                line = raw.rstrip("\n")
                record = _LOG_RECORD.match(line)
                if record:
                    in_error = record.group(1) in ("ERROR", "FATAL")
                    if in_error:
                        found.append(line)
                elif in_error and line.strip() and not line.lstrip().startswith(("at ", "...")):
                    found.append("    " + line.strip())
    except FileNotFoundError:
        return []
    return found[-limit:]


@contextlib.contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``lock_path`` (created if needed)."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _find_java() -> str:
    """Locate the ``java`` executable (``$JAVA_HOME/bin/java`` first, then ``PATH``)."""
    java_home = os.environ.get("JAVA_HOME")
    if java_home:
        candidate = Path(java_home) / "bin" / "java"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which("java")
    if not found:
        raise KafkaSetupError(
            f"java not found (neither $JAVA_HOME/bin/java nor on PATH): Kafka {KAFKA_VERSION} "
            f"needs Java {MIN_JAVA}+, e.g. `apt-get install openjdk-17-jre-headless`."
        )
    return found


def java_major_version(java: str | None = None) -> int:
    """Return the major version of a Java runtime.

    Parameters
    ----------
    java : str, optional
        Path of the ``java`` executable; located with ``$JAVA_HOME`` / ``PATH`` if omitted.

    Returns
    -------
    int
        17 for ``17.0.15``, 8 for ``1.8.0_402``.

    Raises
    ------
    KafkaSetupError
        If java is missing or its version cannot be read.
    """
    java = java or _find_java()
    try:
        proc = subprocess.run(
            [java, "-version"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise KafkaSetupError(f"cannot run `{java} -version`: {exc}") from exc
    out = proc.stderr + proc.stdout
    match = re.search(r'version "(\d+)(?:\.(\d+))?', out)
    if not match:
        raise KafkaSetupError(f"cannot parse the output of `{java} -version`: {out.strip()!r}")
    major = int(match.group(1))
    if major == 1 and match.group(2):  # 1.8.0_x style
        major = int(match.group(2))
    return major


def _check_java() -> str:
    """Return the java executable after checking it is Java 17 or newer."""
    java = _find_java()
    major = java_major_version(java)
    if major < MIN_JAVA:
        raise KafkaSetupError(
            f"{java} is Java {major}; Kafka {KAFKA_VERSION} needs Java {MIN_JAVA} or newer "
            "(set JAVA_HOME or put a newer java first on PATH)."
        )
    return java


def ensure_jars(cache_dir: Path | None = None, *, timeout_s: float = 900.0) -> Path:
    """Fetch the Kafka broker jars with Maven into the cache, unless already there.

    Runs ``mvn -B -q -f deploy/kafka/pom.xml dependency:copy-dependencies
    -DincludeScope=runtime`` into a temporary directory and moves it to
    ``<cache>/kafka-4.0.0/libs`` once complete. A marker file holding the hash of the
    pom makes later calls return at once (and refetch when the pom changes). Safe
    against concurrent callers (file lock).

    Parameters
    ----------
    cache_dir : Path, optional
        Cache root; :func:`default_cache_dir` if omitted.
    timeout_s : float
        Upper bound for the Maven run.

    Returns
    -------
    Path
        The directory holding the jars (use ``<libs>/*`` as the classpath).

    Raises
    ------
    KafkaSetupError
        If java or mvn is missing, or Maven fails (its output tail is in the message).
    """
    cache_dir = (cache_dir or default_cache_dir()).expanduser().resolve()
    pom = DEPLOY_DIR / "pom.xml"
    if not pom.is_file():
        raise KafkaSetupError(f"{pom} is missing")
    pom_hash = hashlib.sha256(pom.read_bytes()).hexdigest()
    root = cache_dir / f"kafka-{KAFKA_VERSION}"
    libs = root / "libs"
    marker = root / _MARKER

    def complete() -> bool:
        try:
            return marker.read_text().strip() == pom_hash and any(libs.glob("kafka_*.jar"))
        except FileNotFoundError:
            return False

    if complete():
        return libs
    _check_java()
    mvn = shutil.which("mvn")
    if not mvn:
        raise KafkaSetupError(
            "mvn not found on PATH: it fetches the Kafka jars from Maven Central "
            "(e.g. `apt-get install maven`)."
        )
    with _locked(cache_dir / f"kafka-{KAFKA_VERSION}.lock"):
        if complete():  # another process fetched them while we waited
            return libs
        root.mkdir(parents=True, exist_ok=True)
        for stale in root.glob("libs-*"):  # left by an interrupted fetch
            shutil.rmtree(stale, ignore_errors=True)
        staging = Path(tempfile.mkdtemp(prefix="libs-", dir=root))
        cmd = [
            mvn,
            "-B",
            "-q",
            "-Dstyle.color=never",
            "-f",
            str(pom),
            "dependency:copy-dependencies",
            "-DincludeScope=runtime",
            f"-DoutputDirectory={staging}",
        ]
        log.info("fetching Kafka %s jars with Maven into %s", KAFKA_VERSION, libs)
        started = time.monotonic()
        try:
            proc = subprocess.run(
                cmd, capture_output=True, text=True, timeout=timeout_s, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            shutil.rmtree(staging, ignore_errors=True)
            raise KafkaSetupError(f"`{' '.join(cmd)}` failed: {exc}") from exc
        if proc.returncode != 0 or not any(staging.glob("kafka_*.jar")):
            shutil.rmtree(staging, ignore_errors=True)
            output = (proc.stdout + proc.stderr).strip().splitlines()[-_LOG_TAIL:]
            raise KafkaSetupError(
                f"Maven could not fetch the Kafka jars (exit {proc.returncode}): "
                f"{' '.join(cmd)}\n" + "\n".join(output)
            )
        marker.unlink(missing_ok=True)
        if libs.exists():
            shutil.rmtree(libs)
        staging.rename(libs)
        marker.write_text(pom_hash + "\n")
        log.info(
            "fetched %d jars in %.1fs", len(list(libs.glob("*.jar"))), time.monotonic() - started
        )
    return libs


def _new_cluster_id() -> str:
    """Return a random KRaft cluster id (a UUID as 22 characters of URL-safe base64).

    Like Kafka's own ``Uuid.randomUuid()``, never one starting with ``-``: StorageTool's
    argument parser would take ``-t -abc...`` for an option (seen as a flaky format
    failure, one run in 64).
    """
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode("ascii")
        if not cluster_id.startswith("-"):
            return cluster_id


def _pid_state(pid: int) -> str | None:
    """Return the ``/proc`` state letter of ``pid`` (``None`` if it does not exist)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # "pid (comm) S ...": comm may contain spaces and parentheses.
    return stat.rsplit(")", 1)[1].split()[0]


def _pid_cmdline(pid: int) -> list[str]:
    """Return the command line of ``pid`` (empty if unknown)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


class LocalKafka:
    """A single-node KRaft Kafka broker (combined broker and controller) on loopback.

    Parameters
    ----------
    data_dir : Path, optional
        Holds the rendered config, the KRaft storage (``data/``), the logs (``logs/``) and
        the JSON state file; :func:`default_data_dir` if omitted.
    port : int, optional
        Client (PLAINTEXT) port; ``None`` picks a free loopback port (or reuses the port of
        the previous run of this data directory when it is still free).
    controller_port : int, optional
        KRaft controller port; chosen like ``port`` when ``None``.
    heap : str
        JVM heap, used for both ``-Xms`` and ``-Xmx`` (``"512m"``).
    cache_dir : Path, optional
        Jar cache root, see :func:`ensure_jars`.
    exit_with_parent : bool
        On Linux, have the kernel SIGTERM the broker when the process (strictly: the
        thread) that started it dies, so that a killed test run leaves no JVM behind.
        Off for the CLI, whose broker outlives the command.
    extra_config : Mapping[str, str], optional
        Broker properties appended after the template's, so they override it (the tests
        add TLS and SASL listeners this way). The PLAINTEXT listener on ``port`` must stay:
        readiness is probed on it.

    Examples
    --------
    >>> kafka = LocalKafka(Path("/tmp/vg-kafka"), heap="256m")  # doctest: +SKIP
    >>> kafka.start(timeout_s=60)  # doctest: +SKIP
    '127.0.0.1:40123'
    >>> kafka.status()["running"]  # doctest: +SKIP
    True
    """

    host: str = LOOPBACK

    def __init__(
        self,
        data_dir: Path | str | None = None,
        *,
        port: int | None = None,
        controller_port: int | None = None,
        heap: str = "512m",
        cache_dir: Path | None = None,
        exit_with_parent: bool = False,
        extra_config: Mapping[str, str] | None = None,
    ) -> None:
        self.data_dir = Path(data_dir).expanduser() if data_dir else default_data_dir()
        self.data_dir = self.data_dir.resolve()
        self.requested_port = port
        self.requested_controller_port = controller_port
        self.port: int | None = port
        self.controller_port: int | None = controller_port
        self.heap = heap
        self.cache_dir = cache_dir
        self.exit_with_parent = exit_with_parent
        self.extra_config = dict(extra_config or {})
        self.pid: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_offset = 0  # where this run's part of server.log starts
        state = self._read_state()
        if state and self._alive(state):
            self._adopt(state)

    # ------------------------------------------------------------------ paths

    @property
    def state_path(self) -> Path:
        """JSON file with pid, ports and cluster id of the broker of this data dir."""
        return self.data_dir / STATE_FILE

    @property
    def config_path(self) -> Path:
        """Rendered ``server.properties``."""
        return self.data_dir / CONFIG_FILE

    @property
    def log_dir(self) -> Path:
        """Directory of the broker's own logs (``server.log``, ``console.out``)."""
        return self.data_dir / LOG_SUBDIR

    @property
    def log_path(self) -> Path:
        """The broker's log4j2 log file."""
        return self.log_dir / SERVER_LOG

    @property
    def console_path(self) -> Path:
        """The JVM's stdout/stderr (only JVM-level failures end up here)."""
        return self.log_dir / CONSOLE_LOG

    @property
    def storage_dir(self) -> Path:
        """KRaft storage (``log.dirs``): topic partitions and the metadata log."""
        return self.data_dir / DATA_SUBDIR

    @property
    def bootstrap(self) -> str:
        """``"127.0.0.1:<port>"`` for ``bootstrap.servers``.

        Raises
        ------
        KafkaError
            If no port is known yet (not started and none given).
        """
        if self.port is None:
            raise KafkaError("the broker has no port yet: call start() first")
        return f"{self.host}:{self.port}"

    # ------------------------------------------------------------------ state

    def _read_state(self) -> dict[str, Any] | None:
        """Return the state file's content, ``None`` if missing or unreadable."""
        try:
            data = json.loads(self.state_path.read_text())
        except (FileNotFoundError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def _write_state(self, **fields: Any) -> None:
        """Merge ``fields`` into the state file (atomic replace)."""
        state = self._read_state() or {}
        state.update(fields)
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2, sort_keys=True) + "\n")
        tmp.replace(self.state_path)

    def _adopt(self, state: dict[str, Any]) -> None:
        """Take pid and ports over from a running broker's state.

        Explicitly requested ports that differ are checked by :meth:`start`.
        """
        if self.requested_port not in (None, state.get("port")) or (
            self.requested_controller_port not in (None, state.get("controller_port"))
        ):
            return
        self.pid = int(state["pid"])
        self.port = int(state["port"])
        self.controller_port = int(state["controller_port"])

    def _alive(self, state: dict[str, Any]) -> bool:
        """Tell whether the state's pid is a live broker of this data directory."""
        pid = state.get("pid")
        if not isinstance(pid, int):
            return False
        return self._pid_is_our_broker(pid)

    def _pid_is_our_broker(self, pid: int) -> bool:
        """Tell whether ``pid`` is alive (not a zombie) and runs kafka.Kafka on our config."""
        if self._proc is not None and self._proc.pid == pid and self._proc.poll() is not None:
            return False
        status = _pid_state(pid)
        if status is None or status in ("Z", "X"):
            return False
        cmdline = _pid_cmdline(pid)
        return "kafka.Kafka" in cmdline and str(self.config_path) in cmdline

    def is_running(self) -> bool:
        """Tell whether the broker of this data directory is running.

        Returns
        -------
        bool
            True if the pid in the state file is alive and runs our ``kafka.Kafka``.
        """
        state = self._read_state()
        return state is not None and self._alive(state)

    def status(self) -> dict[str, Any]:
        """Describe the broker of this data directory.

        Returns
        -------
        dict
            ``running``, ``pid``, ``bootstrap``, ``port``, ``controller_port``,
            ``data_dir``, ``log``, ``kafka_version`` and ``cluster_id``.
        """
        state = self._read_state() or {}
        running = bool(state) and self._alive(state)
        port = state.get("port", self.port)
        return {
            "running": running,
            "pid": state.get("pid") if running else None,
            "bootstrap": f"{self.host}:{port}" if port else None,
            "port": port,
            "controller_port": state.get("controller_port", self.controller_port),
            "data_dir": str(self.data_dir),
            "log": str(self.log_path),
            "kafka_version": KAFKA_VERSION,
            "cluster_id": state.get("cluster_id"),
        }

    def log_tail(self, lines: int = _LOG_TAIL) -> list[str]:
        """Return the last lines of the broker log (and of the JVM console if non-empty).

        Parameters
        ----------
        lines : int
            How many lines of each file.

        Returns
        -------
        list of str
            Lines without their newline.
        """
        out = _tail(self.log_path, lines)
        console = [line for line in _tail(self.console_path, lines) if line.strip()]
        if console:
            out += [f"--- {self.console_path} ---", *console]
        return out

    # ------------------------------------------------------------------ start

    def start(self, timeout_s: float = 60.0, *, warm_up: bool = True) -> str:
        """Start the broker (or reuse the running one) and wait until it serves requests.

        Parameters
        ----------
        timeout_s : float
            How long to wait for the broker to answer a metadata request.
        warm_up : bool
            After a fresh start, also have the broker create and load its group and
            transaction coordinators (see :meth:`warm_up`).

        Returns
        -------
        str
            The bootstrap address ``"127.0.0.1:<port>"``.

        Raises
        ------
        KafkaSetupError
            If java/mvn are missing or the jars cannot be fetched.
        KafkaStartError
            If the broker exits or does not become ready in time; the message carries
            the last lines of its log.
        """
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with _locked(self.data_dir / ".lock"):
            state = self._read_state() or {}
            if state and self._alive(state):
                return self._reuse(state, timeout_s)
            libs = ensure_jars(self.cache_dir)
            java = _check_java()
            self._choose_ports(state)
            self.log_dir.mkdir(parents=True, exist_ok=True)
            self._render_config()
            cluster_id = self._format_storage(java, libs, state.get("cluster_id"))
            started = time.monotonic()
            self._launch(java, libs)
            self._write_state(
                pid=self.pid,
                port=self.port,
                controller_port=self.controller_port,
                host=self.host,
                cluster_id=cluster_id,
                heap=self.heap,
                kafka_version=KAFKA_VERSION,
                started_at=time.time(),
            )
            try:
                self._wait_ready(timeout_s)
            except KafkaStartError:
                self._terminate(5.0)
                self._write_state(pid=None)
                raise
            log.info(
                "Kafka %s ready on %s in %.1fs (pid %s, data %s)",
                KAFKA_VERSION,
                self.bootstrap,
                time.monotonic() - started,
                self.pid,
                self.data_dir,
            )
        if warm_up:
            self.warm_up()
        return self.bootstrap

    def warm_up(self, timeout_s: float = 30.0) -> bool:
        """Make the broker create and load ``__consumer_offsets`` and ``__transaction_state``.

        Kafka creates its internal topics on first use, and clients then back off for a
        second or more per retry: on a fresh broker the first consumer group join takes
        ~3.5s instead of ~0.7s and the first ``init_transactions()`` ~1.5s instead of
        ~0.1s. Doing it once here, with tight retries, costs about a second.

        Parameters
        ----------
        timeout_s : float
            Upper bound for the whole warm-up.

        Returns
        -------
        bool
            True if both coordinators answered, False (logged) otherwise: the broker is
            usable either way.
        """
        from confluent_kafka import Producer
        from confluent_kafka.admin import AdminClient

        started = time.monotonic()
        deadline = started + timeout_s
        client_log = logging.getLogger(f"{__name__}.librdkafka")
        ok = True
        try:
            producer = Producer(
                {
                    "bootstrap.servers": self.bootstrap,
                    "transactional.id": "voltguard-localkafka-warmup",
                    "retry.backoff.ms": 20,
                    "retry.backoff.max.ms": 100,
                    "logger": client_log,
                }
            )
            producer.init_transactions(max(1.0, deadline - time.monotonic()))
        except Exception as exc:  # KafkaException, KafkaError
            log.warning("transaction coordinator warm-up failed: %s", exc)
            ok = False
        # FindCoordinator for a group creates __consumer_offsets, then the coordinator
        # loads it (NOT_COORDINATOR / COORDINATOR_LOAD_IN_PROGRESS meanwhile). Not
        # list_consumer_group_offsets: on an unknown group it can segfault the client
        # (confluent-kafka-python issue #1982).
        admin = AdminClient({"bootstrap.servers": self.bootstrap, "logger": client_log})
        group = "voltguard-localkafka-warmup"
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            try:
                futures = admin.describe_consumer_groups([group], request_timeout=5.0)
                futures[group].result(timeout=max(0.1, deadline - time.monotonic()))
            except Exception as exc:
                last_error = exc
                time.sleep(0.05)
                continue
            last_error = None
            break
        if last_error is not None:
            log.warning("group coordinator warm-up failed: %s", last_error)
            ok = False
        log.info("Kafka coordinators warmed up in %.1fs", time.monotonic() - started)
        return ok

    def _reuse(self, state: dict[str, Any], timeout_s: float) -> str:
        """Adopt the already running broker described by ``state``."""
        for name in ("port", "controller_port"):
            wanted = getattr(self, f"requested_{name}")
            if wanted is not None and wanted != state.get(name):
                raise KafkaStartError(
                    f"a broker already runs from {self.data_dir} (pid {state['pid']}) with "
                    f"{name}={state.get(name)}, not {wanted}: stop it first "
                    "(`voltguard kafka down`)"
                )
        self._adopt(state)
        log.info("reusing the running Kafka broker %s (pid %s)", self.bootstrap, self.pid)
        self._wait_ready(timeout_s)
        return self.bootstrap

    def _choose_ports(self, state: dict[str, Any]) -> None:
        """Pick the ports: explicit ones, else the previous run's if free, else free ones."""
        self.port = self.requested_port
        self.controller_port = self.requested_controller_port
        for name in ("port", "controller_port"):
            if getattr(self, name) is not None:
                continue
            previous = state.get(name)
            taken = {self.port, self.controller_port}
            if (
                isinstance(previous, int)
                and previous not in taken
                and _port_is_free(self.host, previous)
            ):
                setattr(self, name, previous)
                continue
            port = find_free_port(self.host)
            while port in taken:
                port = find_free_port(self.host)
            setattr(self, name, port)

    def _render_config(self) -> None:
        """Write ``server.properties`` from the template for the chosen ports."""
        template = (DEPLOY_DIR / "server.properties.template").read_text()
        rendered = template.format(
            host=self.host,
            port=self.port,
            controller_port=self.controller_port,
            log_dirs=self.storage_dir,
        )
        if self.extra_config:
            extra = "".join(f"{key}={value}\n" for key, value in self.extra_config.items())
            rendered += "\n# extra_config (LocalKafka argument); later keys win\n" + extra
        self.config_path.write_text(rendered)

    def _jvm_options(self, libs: Path) -> list[str]:
        """JVM arguments shared by StorageTool and the broker (classpath, log4j2)."""
        return [
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={DEPLOY_DIR / 'log4j2.yaml'}",
            f"-Dkafka.logs.dir={self.log_dir}",
            "-cp",
            f"{libs}/*",
        ]

    def _format_storage(self, java: str, libs: Path, cluster_id: str | None) -> str:
        """Format the KRaft storage unless ``meta.properties`` already exists.

        Static quorum (``controller.quorum.voters``) means plain ``format -t ID -c CONFIG``:
        ``--standalone`` would format a *dynamic* quorum (kraft.version=1) instead.
        """
        meta = self.storage_dir / "meta.properties"
        if meta.is_file():
            found = re.search(r"^cluster\.id=(.+)$", meta.read_text(), re.MULTILINE)
            return found.group(1).strip() if found else (cluster_id or "")
        cluster_id = cluster_id or _new_cluster_id()
        cmd = [
            java,
            *self._jvm_options(libs),
            "kafka.tools.StorageTool",
            "format",
            "-t",
            cluster_id,
            "-c",
            str(self.config_path),
        ]
        log.info("formatting KRaft storage %s (cluster %s)", self.storage_dir, cluster_id)
        try:
            proc = subprocess.run(
                cmd, capture_output=True, text=True, timeout=120, check=False, cwd=self.data_dir
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise KafkaStartError(f"formatting {self.storage_dir} failed: {exc}") from exc
        if proc.returncode != 0:
            output = (proc.stdout + proc.stderr).strip().splitlines()[-_LOG_TAIL:]
            raise KafkaStartError(
                f"formatting the KRaft storage {self.storage_dir} failed "
                f"(exit {proc.returncode}):\n" + "\n".join(output + self.log_tail())
            )
        self._write_state(cluster_id=cluster_id)
        return cluster_id

    def _launch(self, java: str, libs: Path) -> None:
        """Start the broker JVM detached, stdout and stderr to the console file."""
        try:
            self._log_offset = self.log_path.stat().st_size
        except FileNotFoundError:
            self._log_offset = 0
        cmd = [
            java,
            f"-Xms{self.heap}",
            f"-Xmx{self.heap}",
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            "-XX:InitiatingHeapOccupancyPercent=35",
            "-XX:+ExplicitGCInvokesConcurrent",
            "-XX:+ExitOnOutOfMemoryError",
            *self._jvm_options(libs),
            "kafka.Kafka",
            str(self.config_path),
        ]
        if self.exit_with_parent and sys.platform.startswith("linux"):
            cmd = [sys.executable, "-c", _PDEATHSIG_SHIM, str(os.getpid()), *cmd]
        log.debug("launching %s", " ".join(cmd))
        with self.console_path.open("ab") as console:
            self._proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=console,
                stderr=subprocess.STDOUT,
                cwd=self.data_dir,
                start_new_session=True,
                close_fds=True,
            )
        self.pid = self._proc.pid

    def _exited(self) -> int | None:
        """Return the broker's exit status if it is gone, else ``None``."""
        if self._proc is not None:
            return self._proc.poll()
        if self.pid is None:
            return -1
        status = _pid_state(self.pid)
        return -1 if status is None or status in ("Z", "X") else None

    def _start_error(self, reason: str) -> KafkaStartError:
        """Build a :class:`KafkaStartError` carrying the log tail."""
        errors = _log_errors(self.log_path, self._log_offset)
        tail = self.log_tail(_LOG_TAIL)
        parts = [f"Kafka {KAFKA_VERSION} broker ({self.data_dir}) {reason}."]
        if errors:
            parts += [f"Errors in {self.log_path}:", *errors]
        parts += [f"Last lines of {self.log_path}:", *(tail or ["(the broker wrote no log)"])]
        return KafkaStartError("\n".join(parts))

    def _wait_ready(self, timeout_s: float) -> None:
        """Wait until the broker answers a metadata request with itself in it."""
        from confluent_kafka.admin import AdminClient  # heavy import, only when needed

        deadline = time.monotonic() + timeout_s
        admin: AdminClient | None = None
        last_error = "no TCP connection"
        while True:
            code = self._exited()
            if code is not None:
                raise self._start_error(f"exited (status {code}) before it became ready")
            if time.monotonic() >= deadline:
                raise self._start_error(
                    f"was not ready after {timeout_s:.0f}s (last error: {last_error})"
                )
            # Probe TCP first: librdkafka would log every refused connection.
            if admin is None and not _accepts_tcp(self.host, int(self.port or 0)):
                time.sleep(0.1)
                continue
            if admin is None:
                admin = AdminClient(
                    {
                        "bootstrap.servers": self.bootstrap,
                        "socket.connection.setup.timeout.ms": 1000,
                        "reconnect.backoff.ms": 50,
                        "reconnect.backoff.max.ms": 500,
                        "logger": logging.getLogger(f"{__name__}.librdkafka"),
                    }
                )
            try:
                metadata = admin.list_topics(timeout=1.0)
            except Exception as exc:  # KafkaException: not ready yet
                last_error = str(exc)
                continue
            if metadata.brokers:
                return
            last_error = "metadata without brokers"
            time.sleep(0.1)

    # ------------------------------------------------------------------ stop

    def stop(self, timeout_s: float = 30.0) -> bool:
        """Stop the broker of this data directory (SIGTERM, then SIGKILL).

        Parameters
        ----------
        timeout_s : float
            How long to wait for the controlled shutdown before SIGKILL.

        Returns
        -------
        bool
            True if a running broker was stopped, False if none was running.
        """
        if not self.data_dir.is_dir():
            return False
        with _locked(self.data_dir / ".lock"):
            state = self._read_state() or {}
            if not state or not self._alive(state):
                self._reap()
                if state.get("pid") is not None:
                    self._write_state(pid=None)
                return False
            self.pid = int(state["pid"])
            self._terminate(timeout_s)
            self._write_state(pid=None, stopped_at=time.time())
            return True

    def _reap(self) -> None:
        """Collect our own child's exit status so it does not linger as a zombie."""
        if self._proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(timeout=0)

    def _terminate(self, timeout_s: float) -> None:
        """SIGTERM the broker, wait up to ``timeout_s``, then SIGKILL it."""
        pid = self.pid
        if pid is None:
            return
        started = time.monotonic()
        for sig, wait_s in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, 10.0)):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                break
            if sig == signal.SIGKILL:
                log.warning("Kafka broker pid %s ignored SIGTERM for %.0fs: killed", pid, timeout_s)
            if self._wait_gone(pid, wait_s):
                break
        self._reap()
        log.info("Kafka broker pid %s stopped in %.1fs", pid, time.monotonic() - started)
        self.pid = None

    def _wait_gone(self, pid: int, timeout_s: float) -> bool:
        """Wait until ``pid`` has exited; True if it did within ``timeout_s``."""
        if self._proc is not None and self._proc.pid == pid:
            try:
                self._proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                return False
            return True
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            status = _pid_state(pid)
            if status is None or status in ("Z", "X"):
                return True
            time.sleep(0.05)
        return False

    def __enter__(self) -> LocalKafka:
        """Start the broker for a ``with`` block."""
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        """Stop the broker at the end of a ``with`` block."""
        self.stop()

    def __repr__(self) -> str:
        """Show data dir and ports."""
        return (
            f"LocalKafka(data_dir={str(self.data_dir)!r}, port={self.port}, "
            f"controller_port={self.controller_port}, heap={self.heap!r})"
        )
