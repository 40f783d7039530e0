"""Tasks the OT-2 agent can run, and the lab (protocol context) they run in.

A task is a plain function registered with ``@task``; its signature (type hints, pydantic
``Annotated[..., Field(...)]`` constraints) becomes the parameter model that every request
is checked against before anything moves. ``current_lab()`` gives a running task the
protocol context, labware and pipettes that the agent set up once from its config.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, create_model

# -- task registry -------------------------------------------------------------------


class TaskInputError(ValueError):
    """Raise from a task, before moving anything, when its parameters cannot be run (422)."""


@dataclass(frozen=True)
class TaskSpec:
    """A registered task: the function and the model its parameters are checked with."""

    name: str
    function: Callable[..., Any]
    parameters: type[BaseModel]
    description: str

    def schema(self) -> dict[str, Any]:
        """What ``GET /tasks`` shows for this task."""
        return {
            "name": self.name,
            "description": self.description,
            "parameters": self.parameters.model_json_schema(),
        }


TASKS: dict[str, TaskSpec] = {}


def _parameters_model(function: Callable[..., Any], name: str) -> type[BaseModel]:
    hints = typing.get_type_hints(function, include_extras=True)
    fields: dict[str, Any] = {}
    for parameter in inspect.signature(function).parameters.values():
        if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            raise TypeError(f"task {name!r}: *args/**kwargs cannot be described as parameters")
        annotation = hints.get(parameter.name, Any)
        default = ... if parameter.default is parameter.empty else parameter.default
        fields[parameter.name] = (annotation, default)
    model: type[BaseModel] = create_model(
        f"{name}_parameters", __config__=ConfigDict(extra="forbid"), **fields
    )
    return model


def task(function: Callable[..., Any] | None = None, *, name: str | None = None) -> Any:
    """Register ``function`` as a task (``@task`` or ``@task(name="...")``); returns it as is."""

    def register(fn: Callable[..., Any]) -> Callable[..., Any]:
        task_name = name or fn.__name__
        if task_name in TASKS and TASKS[task_name].function is not fn:
            raise ValueError(f"task {task_name!r} is registered twice")
        doc = inspect.getdoc(fn) or ""
        TASKS[task_name] = TaskSpec(
            task_name, fn, _parameters_model(fn, task_name), doc.split("\n\n")[0]
        )
        return fn

    return register(function) if function is not None else register


def load_task_module(reference: str) -> None:
    """Import a module of tasks: a module name on the path, or a ``.py`` file."""
    if reference.endswith(".py"):
        path = Path(reference).resolve()
        spec = importlib.util.spec_from_file_location(path.stem, path)
        if spec is None or spec.loader is None:
            raise ImportError(f"cannot load tasks from {reference}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[path.stem] = module
        spec.loader.exec_module(module)
    else:
        importlib.import_module(reference)


# -- the robot -----------------------------------------------------------------------


class Lab:
    """The protocol context with the labware and pipettes of the config file, set up once."""

    def __init__(self, config: dict[str, Any], simulate: bool) -> None:
        self.config = config
        self.simulate = simulate
        self.protocol: Any = None
        self.labware: dict[str, Any] = {}
        self.pipettes: dict[str, Any] = {}

    def setup(self) -> None:
        """Create the protocol context and load what the config lists."""
        api_level = str(self.config.get("api_level", "2.20"))
        if self.simulate:
            from opentrons import simulate

            self.protocol = simulate.get_protocol_api(api_level)
        else:
            from opentrons import execute

            self.protocol = execute.get_protocol_api(api_level)
        for label, spec in self.config.get("labware", {}).items():
            self.labware[label] = self.protocol.load_labware(
                spec["load_name"], spec["slot"], label=label
            )
        for label, spec in self.config.get("pipettes", {}).items():
            racks = [self.labware[rack] for rack in spec.get("tip_racks", [])]
            self.pipettes[label] = self.protocol.load_instrument(
                spec["name"], spec["mount"], tip_racks=racks
            )

    def well(self, labware: str, well: str) -> Any:
        """A well by name; TaskInputError when the labware has no such well."""
        wells = self.labware[labware].wells_by_name()
        if well not in wells:
            raise TaskInputError(f"{labware} has no well {well!r}")
        return wells[well]

    def location(self, reference: str) -> Any:
        """``"labware:WELL"`` from the config as a well."""
        labware, _, well = reference.partition(":")
        return self.well(labware, well)

    def pick_up_tip(self, pipette: Any) -> None:
        """Next tip; in simulation an empty rack is refilled, on the robot it is a fault."""
        if all(rack.next_tip() is None for rack in pipette.tip_racks):
            if not self.simulate:
                raise RuntimeError("out of tips: refill the tip racks, then run reset_tips")
            pipette.reset_tipracks()
        pipette.pick_up_tip()

    def run_log(self) -> list[str]:
        """What the protocol context recorded, oldest first."""
        return list(self.protocol.commands()) if self.protocol is not None else []

    def describe(self) -> dict[str, Any]:
        """Loaded labware and pipettes for ``/health``."""
        return {
            "labware": {
                label: {"load_name": lw.load_name, "slot": str(lw.parent)}
                for label, lw in self.labware.items()
            },
            "pipettes": {
                label: {"name": p.name, "mount": p.mount, "has_tip": bool(p.has_tip)}
                for label, p in self.pipettes.items()
            },
        }


_lab: Lab | None = None


def current_lab() -> Lab:
    """The running agent's lab, for use inside tasks."""
    if _lab is None:
        raise RuntimeError("the agent has not set up the robot")
    return _lab


def use_lab(lab: Lab) -> None:
    """Make ``lab`` the one ``current_lab()`` returns (the agent calls this at start)."""
    global _lab
    _lab = lab
