"""OT-2 agent: the robot's protocol API, callable over HTTP one action at a time.

Runs on the robot with the OT-2's own Python and ``opentrons`` 8.x (plus FastAPI and
uvicorn, see requirements.txt); it needs nothing else from the pusher and is deployed alone.

    POST /execute/{task}   parameters as a JSON object, ``X-Request-ID`` header
        200 {"status": "success", "result": ...}
        404 unknown task · 422 invalid parameters (nothing moved) · 400 body not a JSON object
        409 busy: another action is running (nothing was queued; ``Retry-After`` says when)
        500 robot fault: the task raised while running (the robot may have moved)
        every error body is {"status": "error", "error": "..."}
    GET /tasks             every task with its parameters' JSON schema
    GET /health            simulation or robot, busy, loaded labware and pipettes
    GET /run-log?since=N   the protocol run log (what the robot did, in order)

A request_id that was already executed gets its stored answer back (header
``X-Replayed: 1``) instead of moving the robot again; answers are kept in the state
directory, so this holds across restarts. A request that was running when the agent
stopped is answered "interrupted" rather than run again.

Tasks are plain functions registered with ``@task`` (lab code written for the Prefect
version changes only the decorator); the parameter schema comes from the signature::

    from ot2_agent import TaskInputError, current_lab, task

    @task
    def dispense_water(volume: float, well: str) -> dict:
        lab = current_lab()
        ...

``OT2_SIMULATE=1`` runs on ``opentrons.simulate`` (anywhere), ``OT2_SIMULATE=0`` on
``opentrons.execute`` (the robot); unset means the robot when running on one.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hmac
import json
import logging
import os
import sys
import threading
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse

# The agent's own modules sit beside it (run as a script, its folder is on the path).
from ot2_answers import AnswerBook, error_body
from ot2_tasks import (
    TASKS,
    Lab,
    TaskInputError,
    TaskSpec,
    current_lab,
    load_task_module,
    task,
    use_lab,
)
from pydantic import BaseModel, ValidationError

__all__ = ["Agent", "AnswerBook", "Lab", "TaskInputError", "create_app", "current_lab", "task"]

log = logging.getLogger("ot2_agent")

HERE = Path(__file__).resolve().parent
DEFAULT_PORT = 31960
DEFAULT_CONFIG = HERE / "config.json"
BUSY_RETRY_AFTER_SECONDS = 1


# -- the HTTP side -------------------------------------------------------------------


def _error(code: int, message: str, **headers: str) -> JSONResponse:
    return JSONResponse(error_body(message), status_code=code, headers=headers or None)


def _validation_message(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in error['loc']) or 'parameters'}: {error['msg']}"
        for error in exc.errors()
    )


class Agent:
    """Runs tasks one at a time on a single worker thread (the robot is one machine)."""

    def __init__(self, lab: Lab, book: AnswerBook, token: str | None) -> None:
        self.lab = lab
        self.book = book
        self.token = token
        self.running: tuple[str, str | None] | None = None  # (task, request_id)
        self.executed = 0
        self.busy_refusals = 0
        self.ready = False
        self.setup_error: str | None = None
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="robot")
        self._lock = threading.Lock()

    async def start(self) -> None:
        """Set up the robot on the worker thread (all protocol calls happen there)."""
        use_lab(self.lab)
        try:
            await asyncio.get_running_loop().run_in_executor(self._worker, self.lab.setup)
        except Exception as exc:
            self.setup_error = f"{type(exc).__name__}: {exc}"
            log.exception("robot setup failed")
            return
        self.ready = True

    def stop(self) -> None:
        """Let a running action finish, then release the worker and the answers file."""
        self._worker.shutdown(wait=True)
        self.book.close()

    def authorized(self, request: Request) -> bool:
        """Bearer token check (constant time); always true without a token."""
        if not self.token:
            return True
        scheme, _, value = request.headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(value.strip(), self.token)

    async def execute(self, name: str, request_id: str | None, body: bytes) -> JSONResponse:
        """Validate, run and answer one task request; see the module docstring for codes."""
        if request_id is not None and (stored := self.book.get(request_id)) is not None:
            log.info("answer replayed task=%s request_id=%s", name, request_id)
            return JSONResponse(stored[1], status_code=stored[0], headers={"X-Replayed": "1"})
        spec = TASKS.get(name)
        if spec is None:
            return _error(404, f"unknown task {name!r}; available: {', '.join(sorted(TASKS))}")
        try:
            raw = json.loads(body) if body.strip() else {}
        except ValueError:
            return _error(400, "the body must be a JSON object of parameters")
        if not isinstance(raw, dict):
            return _error(400, "the body must be a JSON object of parameters")
        try:
            parameters = spec.parameters.model_validate(raw)
        except ValidationError as exc:
            return _error(422, f"invalid parameters: {_validation_message(exc)}")
        if not self.ready:
            return _error(503, f"robot not set up: {self.setup_error or 'starting'}")
        if self.running is not None:
            self.busy_refusals += 1
            task_name, running_id = self.running
            what = "this request" if running_id == request_id else f"{task_name!r}"
            return _error(
                409, f"busy: running {what}", **{"Retry-After": str(BUSY_RETRY_AFTER_SECONDS)}
            )
        self.running = (name, request_id)
        started = time.perf_counter()
        try:
            if request_id is not None:
                self.book.started(request_id)
            code, answer = await asyncio.get_running_loop().run_in_executor(
                self._worker, self._run, spec, parameters
            )
            if request_id is not None:
                self.book.finished(request_id, code, answer)
        finally:
            self.running = None
        self.executed += 1
        log.info(
            "task finished task=%s request_id=%s code=%s seconds=%.3f",
            name,
            request_id,
            code,
            time.perf_counter() - started,
        )
        return JSONResponse(answer, status_code=code)

    def _run(self, spec: TaskSpec, parameters: BaseModel) -> tuple[int, dict[str, Any]]:
        with self._lock:
            arguments = {
                field: getattr(parameters, field) for field in type(parameters).model_fields
            }
            try:
                result = spec.function(**arguments)
            except TaskInputError as exc:
                return 422, error_body(str(exc))
            except Exception as exc:
                log.exception("task raised task=%s", spec.name)
                return 500, error_body(f"robot fault: {type(exc).__name__}: {exc}")
            return 200, {"status": "success", "result": jsonable_encoder(result)}

    def health(self) -> dict[str, Any]:
        """What ``GET /health`` answers."""
        running = None
        if self.running is not None:
            running = {"task": self.running[0], "request_id": self.running[1]}
        return {
            "status": "ok" if self.ready else "error",
            "mode": "simulate" if self.lab.simulate else "robot",
            "ready": self.ready,
            "setup_error": self.setup_error,
            "busy": self.running is not None,
            "running": running,
            "executed": self.executed,
            "busy_refusals": self.busy_refusals,
            "answers_kept": len(self.book),
            "tasks": sorted(TASKS),
            **(self.lab.describe() if self.ready else {}),
        }


def create_app(agent: Agent) -> FastAPI:
    """The agent's HTTP API."""

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await agent.start()
        yield
        await asyncio.get_running_loop().run_in_executor(None, agent.stop)

    app = FastAPI(title="OT-2 agent", lifespan=lifespan, docs_url=None, redoc_url=None)

    @app.middleware("http")
    async def require_token(request: Request, call_next: Any) -> Any:
        if request.url.path != "/health" and not agent.authorized(request):
            return _error(401, "unauthorized: a valid bearer token is required")
        return await call_next(request)

    @app.post("/execute/{name}")
    async def execute(name: str, request: Request) -> JSONResponse:
        return await agent.execute(name, request.headers.get("x-request-id"), await request.body())

    @app.get("/tasks")
    async def tasks() -> dict[str, Any]:
        return {"tasks": [spec.schema() for spec in sorted(TASKS.values(), key=lambda s: s.name)]}

    @app.get("/health")
    async def health() -> JSONResponse:
        state = agent.health()
        return JSONResponse(state, status_code=200 if agent.ready else 503)

    @app.get("/run-log")
    async def run_log(since: int = 0) -> dict[str, Any]:
        entries = agent.lab.run_log()
        start = max(0, since)
        return {"entries": entries[start:], "next": len(entries)}

    return app


# -- command line --------------------------------------------------------------------


def _simulate_default() -> bool:
    value = os.environ.get("OT2_SIMULATE")
    if value is not None and value.strip():
        return value.strip().lower() in ("1", "true", "yes", "on")
    try:
        from opentrons.config import IS_ROBOT
    except ImportError:
        return True
    return not IS_ROBOT


def build_parser() -> argparse.ArgumentParser:
    """Command-line options; each has an ``OT2_*`` environment default."""
    env = os.environ.get
    parser = argparse.ArgumentParser(prog="ot2_agent", description=__doc__.split("\n\n")[0])
    # Loopback unless told otherwise: the robot's network is not the agent's to open.
    parser.add_argument("--host", default=env("OT2_AGENT_HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(env("OT2_AGENT_PORT", DEFAULT_PORT)))
    parser.add_argument(
        "--config", type=Path, default=Path(env("OT2_AGENT_CONFIG", DEFAULT_CONFIG))
    )
    parser.add_argument(
        "--tasks",
        action="append",
        help="module or .py file of tasks to load (repeatable; default: color_mixing)",
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=Path(env("OT2_AGENT_STATE_DIR", Path.home() / ".ot2-agent")),
        help="where answers are kept so a repeated request_id never runs twice",
    )
    parser.add_argument("--token-file", type=Path, help="bearer token file (else OT2_AGENT_TOKEN)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--simulate", dest="simulate", action="store_true", default=None)
    mode.add_argument("--robot", dest="simulate", action="store_false")
    parser.add_argument("--log-level", default=env("OT2_AGENT_LOG_LEVEL", "INFO"))
    return parser


def main(argv: list[str] | None = None) -> int:
    """Start the agent; returns the exit code."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    try:
        config = json.loads(args.config.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        print(f"ot2_agent: cannot read config {args.config}: {exc}", file=sys.stderr)
        return 2
    sys.path.insert(0, str(HERE))
    modules = args.tasks or [
        item for item in os.environ.get("OT2_AGENT_TASKS", "color_mixing").split(",") if item
    ]
    for module in modules:
        load_task_module(module)
    token = (
        args.token_file.read_text(encoding="utf-8").strip()
        if args.token_file
        else os.environ.get("OT2_AGENT_TOKEN") or None
    )
    simulate = _simulate_default() if args.simulate is None else args.simulate
    if not token:
        if not simulate:
            print(
                "ot2_agent: refusing to drive the robot without a token: set OT2_AGENT_TOKEN "
                "or --token-file (anyone who reaches the port could move the robot)",
                file=sys.stderr,
            )
            return 2
        log.warning("no token set: the simulated agent accepts every request")
    agent = Agent(Lab(config, simulate), AnswerBook(args.state_dir), token)
    import uvicorn

    log.info("starting mode=%s port=%s", "simulate" if simulate else "robot", args.port)
    uvicorn.run(
        create_app(agent),
        host=args.host,
        port=args.port,
        log_level=args.log_level.lower(),
        timeout_graceful_shutdown=120,
    )
    return 0


if __name__ == "__main__":
    # Run through the importable module, so that task modules doing
    # ``from ot2_agent import task`` register into the same registry.
    sys.path.insert(0, str(HERE))
    import ot2_agent

    sys.exit(ot2_agent.main())
