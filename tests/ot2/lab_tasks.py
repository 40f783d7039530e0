"""Lab code as it moves over from a Prefect flow: only the decorator changed."""

import time

from ot2_agent import current_lab, task


@task
def slow_step(seconds: float = 1.0, label: str = "slow") -> dict:
    """Wait, then leave a mark in the run log (a long robot action)."""
    time.sleep(seconds)
    current_lab().protocol.comment(f"slow step {label}")
    return {"slept": seconds, "label": label}


@task
def jam() -> dict:
    """A robot fault: raises after starting."""
    current_lab().protocol.comment("jam started")
    raise RuntimeError("gantry stalled")
