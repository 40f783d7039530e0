"""Built-in tasks of the colour-mixing workflow: mix, measure, park, home.

Labware and pipettes come from the agent's config file (``color_mixing`` section): which
pipette mixes, which plate receives, which reservoir wells hold R, Y and B, and where the
sensor (carried on the other mount) parks. Every check runs before anything moves.
"""

from __future__ import annotations

from typing import Annotated, Any

from ot2_agent import TaskInputError, current_lab, task
from pydantic import Field

Volume = Annotated[float, Field(ge=0, le=1000, description="volume in µL (0 = none)")]
WellName = Annotated[
    str, Field(pattern=r"^[A-P](?:[1-9]|1[0-9]|2[0-4])$", description="well, e.g. B7")
]


def _settings() -> dict[str, Any]:
    return dict(current_lab().config.get("color_mixing", {}))


@task
def mix_color(R: Volume, Y: Volume, B: Volume, mix_well: WellName) -> dict[str, Any]:
    """Dispense red, yellow and blue into a well (new tip for each), then mix.

    The three volumes must sum to at most ``max_total_ul`` (300 µL by default); each
    volume is 0 or at least the pipette's minimum.
    """
    lab = current_lab()
    settings = _settings()
    pipette = lab.pipettes[settings.get("pipette", "mixer")]
    plate = settings.get("plate", "plate")
    volumes = {"R": R, "Y": Y, "B": B}
    total = R + Y + B
    limit = float(settings.get("max_total_ul", 300))
    if total > limit:
        raise TaskInputError(f"R + Y + B = {total:g} µL exceeds the {limit:g} µL a well takes")
    if total <= 0:
        raise TaskInputError("nothing to mix: R, Y and B are all 0")
    for colour, volume in volumes.items():
        if 0 < volume < pipette.min_volume:
            raise TaskInputError(
                f"{colour} = {volume:g} µL is below the pipette's {pipette.min_volume:g} µL"
            )
    target = lab.well(plate, mix_well)
    sources = {colour: lab.location(ref) for colour, ref in settings["sources"].items()}

    for colour, volume in volumes.items():
        if volume == 0:
            continue
        lab.pick_up_tip(pipette)
        pipette.aspirate(volume, sources[colour])
        pipette.dispense(volume, target)
        pipette.blow_out(target.top())
        pipette.drop_tip()
    mix = settings.get("mix", {})
    lab.pick_up_tip(pipette)
    pipette.mix(
        int(mix.get("repetitions", 3)),
        min(float(mix.get("volume_ul", 150)), total, pipette.max_volume),
        target,
    )
    pipette.blow_out(target.top())
    pipette.drop_tip()
    return {"mix_well": mix_well, "volumes_ul": volumes, "total_ul": total}


@task
def move_sensor_to_measurement_position(mix_well: WellName) -> dict[str, Any]:
    """Move the sensor just above a well of the plate."""
    lab = current_lab()
    settings = _settings()
    sensor = settings.get("sensor", {})
    target = lab.well(settings.get("plate", "plate"), mix_well)
    height = float(sensor.get("height_above_well_mm", 1.0))
    lab.pipettes[sensor.get("pipette", "sensor")].move_to(target.top(z=height))
    return {"position": mix_well, "height_above_well_mm": height}


@task
def move_sensor_back() -> dict[str, Any]:
    """Park the sensor above its parking slot, out of the mixing pipette's way."""
    from opentrons.types import Point

    lab = current_lab()
    sensor = _settings().get("sensor", {})
    park = sensor.get("park", {"slot": 11, "height_mm": 60})
    location = lab.protocol.deck.position_for(park["slot"]).move(
        Point(0, 0, float(park.get("height_mm", 60)))
    )
    lab.pipettes[sensor.get("pipette", "sensor")].move_to(location)
    return {"parked": True, "slot": park["slot"]}


@task
def home() -> dict[str, Any]:
    """Home every axis."""
    current_lab().protocol.home()
    return {"homed": True}


@task
def reset_tips() -> dict[str, Any]:
    """Mark every tip rack full again (after refilling them)."""
    lab = current_lab()
    for pipette in lab.pipettes.values():
        pipette.reset_tipracks()
    return {"tips_reset": True}
