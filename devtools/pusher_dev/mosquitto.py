"""A private Mosquitto broker on a free port, for ``pusher dev``, the tests and the benchmark.

Persistence is on (in its own directory), so persistent sessions and retained messages
survive ``restart()`` like on a production broker.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Self

from pusher_dev.embedded_kafka import ChildProcess, free_port, wait_for_port

INSTALL_HINT = (
    "mosquitto is not installed: install it with your package manager "
    "(Debian/Ubuntu: apt-get install mosquitto; macOS: brew install mosquitto) "
    "or point MQTT_BROKER_URL at a running MQTT broker"
)


def mosquitto_binary() -> str:
    """Path of the mosquitto executable.

    Raises:
        RuntimeError: it is not installed (the message says how to install it).
    """
    found = shutil.which("mosquitto") or next(
        (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if Path(p).exists()),
        None,
    )
    if found is None:
        raise RuntimeError(INSTALL_HINT)
    return found


class PrivateMosquitto(ChildProcess):
    """A mosquitto process listening on ``127.0.0.1:port`` only."""

    def __init__(
        self,
        port: int | None = None,
        host: str = "127.0.0.1",
        password_file: Path | None = None,
        acl_file: Path | None = None,
    ) -> None:
        """Anonymous access unless a ``password_file`` (and an ``acl_file``) is given."""
        super().__init__()
        self.host = host
        self.port = port or free_port(host)
        self.password_file = password_file
        self.acl_file = acl_file
        self.directory = Path(tempfile.mkdtemp(prefix="pusher-mosquitto-"))

    @property
    def url(self) -> str:
        """Address for ``MQTT_BROKER_URL``."""
        return f"mqtt://{self.host}:{self.port}"

    @property
    def log_path(self) -> Path:
        """The broker's log file."""
        return self.directory / "mosquitto.log"

    def _write_config(self) -> Path:
        config = self.directory / "mosquitto.conf"
        config.write_text(
            "\n".join(
                [
                    f"listener {self.port} {self.host}",
                    *self._access(),
                    "persistence true",
                    f"persistence_location {self.directory}/",
                    "autosave_interval 1",
                    "max_queued_messages 100000",
                    "max_inflight_messages 0",
                    "set_tcp_nodelay true",
                    f"log_dest file {self.log_path}",
                    "log_type error",
                    "log_type warning",
                    "",
                ]
            )
        )
        return config

    def _access(self) -> list[str]:
        # Started by root (a container, CI), mosquitto would switch to its own user, which
        # cannot read this private directory: keep the starting user.
        lines = ["user root"] if os.geteuid() == 0 else []
        if self.password_file is None:
            return [*lines, "allow_anonymous true"]
        lines += ["allow_anonymous false", f"password_file {self.password_file}"]
        if self.acl_file is not None:
            lines.append(f"acl_file {self.acl_file}")
        return lines

    def start(self, timeout: float = 10.0) -> Self:
        """Start the broker and wait until it accepts connections.

        Raises:
            RuntimeError: mosquitto is missing, exited, or did not listen in time.
        """
        config = self._write_config()
        binary = mosquitto_binary()
        with (self.directory / "stderr.log").open("ab") as stderr:
            self._process = subprocess.Popen(  # noqa: S603 - fixed binary and arguments
                [binary, "-c", str(config)],
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                start_new_session=True,
            )
        if not wait_for_port(self.host, self.port, timeout) or self._process.poll() is not None:
            error = (self.directory / "stderr.log").read_text(errors="replace")
            self.stop()
            raise RuntimeError(f"mosquitto did not start on port {self.port}: {error[-1000:]}")
        return self

    def restart(self, down_seconds: float = 0.0) -> None:
        """Stop and start again on the same port, keeping persisted sessions."""
        self.stop()
        time.sleep(down_seconds)
        self.start()

    def close(self) -> None:
        """Stop (SIGTERM: it saves its persistence file) and remove the broker's directory."""
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)
