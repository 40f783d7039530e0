"""Which dispatch policy a command gets: the registry's, made stricter on request."""

from __future__ import annotations

from connectors.errors import CommandRejected
from connectors.registry import DeviceEntry
from preservarium_pusher_api.core.contract import CommandMessage, DispatchPolicy


def resolve_policy(
    command: CommandMessage, device: DeviceEntry | None, default: DispatchPolicy
) -> DispatchPolicy:
    """Dispatch policy: the registry's (else the default), made stricter by
    ``metadata.dispatch`` when it asks for that — never weaker: a caller cannot make a
    device that must finish one command before the next (``on_result``) take a burst.

    Raises:
        CommandRejected: ``metadata.dispatch`` names no policy.
    """
    base = device.dispatch if device is not None and device.dispatch is not None else default
    requested = command.metadata.get("dispatch")
    if requested is None:
        return base
    try:
        wanted = DispatchPolicy(requested)
    except ValueError:
        choices = ", ".join(policy.value for policy in DispatchPolicy)
        raise CommandRejected(f"metadata.dispatch must be one of {choices}") from None
    return max(base, wanted, key=_STRICTNESS.index)


_STRICTNESS = [DispatchPolicy.BURST, DispatchPolicy.ON_ACK, DispatchPolicy.ON_RESULT]
