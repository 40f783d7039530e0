"""The OT-2 agent (``firmware/ot2``) in simulation as a child process, for dev and tests.

The agent is the code that runs on the robot; here it runs on ``opentrons.simulate``
(the ``ot2`` extra) from the source tree, with its own state directory and log file.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Self

import httpx

from pusher_dev.embedded_kafka import ChildProcess, free_port

AGENT_DIR = Path(__file__).resolve().parents[2] / "firmware" / "ot2"


def agent_available() -> str | None:
    """Why the simulated agent cannot start here, or None when it can."""
    if not (AGENT_DIR / "ot2_agent.py").exists():
        return f"the OT-2 agent source is not at {AGENT_DIR} (run from a source checkout)"
    try:
        import opentrons  # noqa: F401
    except ImportError:
        return "opentrons is not installed: pip install -e '.[ot2]'"
    return None


class SimulatedOt2Agent(ChildProcess):
    """``python firmware/ot2/ot2_agent.py --simulate`` on ``127.0.0.1:port``."""

    stop_timeout = 15.0  # a running action finishes first

    def __init__(
        self,
        port: int | None = None,
        tasks: list[str] | None = None,
        token: str | None = None,
        state_dir: Path | None = None,
        host: str = "127.0.0.1",
        echo: Callable[[str], None] | None = None,
        log_level: str = "warning",
    ) -> None:
        super().__init__()
        self.host = host
        self.port = port or free_port(host)
        self.tasks = tasks
        self.token = token
        self.directory = Path(tempfile.mkdtemp(prefix="pusher-ot2-"))
        self.state_dir = state_dir or self.directory / "state"
        self.echo = echo
        self.log_level = log_level

    @property
    def base_url(self) -> str:
        """Address for the device registry's ``address.base_url``."""
        return f"http://{self.host}:{self.port}"

    @property
    def log_path(self) -> Path:
        """The agent's log file."""
        return self.directory / "agent.log"

    def start(self, timeout: float = 60.0) -> Self:
        """Start the agent and wait until ``/health`` says the robot is set up.

        Raises:
            RuntimeError: the agent cannot run here, exited, or was not ready in time.
        """
        if (reason := agent_available()) is not None:
            raise RuntimeError(reason)
        command = [
            sys.executable,
            str(AGENT_DIR / "ot2_agent.py"),
            "--simulate",
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--state-dir",
            str(self.state_dir),
            "--log-level",
            self.log_level,
        ]
        for module in self.tasks or []:
            command += ["--tasks", module]
        env = {
            **os.environ,
            "OT2_AGENT_TOKEN": self.token or "",
            # opentrons keeps its settings here instead of the user's home
            "OT_API_CONFIG_DIR": str(self.directory / "opentrons"),
        }
        if self.echo is None:
            with self.log_path.open("ab") as log_file:
                self._process = subprocess.Popen(  # noqa: S603 - our interpreter and script
                    command, stdout=log_file, stderr=subprocess.STDOUT, env=env
                )
        else:
            self._process = subprocess.Popen(  # noqa: S603 - our interpreter and script
                command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env
            )
            threading.Thread(target=self._copy_output, daemon=True).start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                break
            try:
                if httpx.get(f"{self.base_url}/health", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        log = self.log_path.read_text(errors="replace")[-2000:] if self.log_path.exists() else ""
        self.stop()
        raise RuntimeError(f"OT-2 agent did not become ready on port {self.port}: {log}")

    def _copy_output(self) -> None:
        """Each line the agent prints: to its log file and to ``echo``."""
        process = self._process
        if process is None or process.stdout is None or self.echo is None:
            return
        with self.log_path.open("ab") as log_file:
            for line in process.stdout:
                log_file.write(line)
                self.echo(line.decode(errors="replace").rstrip())

    def close(self) -> None:
        """Stop and remove the agent's directory."""
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)
