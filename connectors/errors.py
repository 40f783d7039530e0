"""Errors of the connector runtime; each says whether delivering again may help.

``retriable`` is only true where the device surely did not get the command (no
connection to the broker or device): a command the device may already have executed is
never sent again.
"""

from __future__ import annotations

from preservarium_pusher_api.core.errors import PusherError


class ConnectorError(PusherError):
    """Root of the connector errors."""


class TransportUnavailable(ConnectorError):
    """The transport is not connected; nothing left this process. Retry with backoff."""

    retriable = True


class DeviceBusy(TransportUnavailable):
    """The device refused the command because it is running another one; nothing ran.

    Retried after ``retry_after`` seconds (the device's Retry-After, else a short
    backoff) without counting as a delivery attempt, until the command's timeout passed.
    """


class DeliveryUncertain(ConnectorError):
    """The command left this process but its receipt was not confirmed.

    The device may have it: never send it again; wait for its answer or the timeout.
    """


class DeliveryTimedOut(DeliveryUncertain):
    """The transport gave up waiting for the device's acknowledgement (e.g. CoAP's
    retransmissions ran out); reported ``timed_out`` at once, never sent again."""


class CommandRejected(ConnectorError):
    """The command cannot be delivered as it is (unknown device, bad parser, bad target).

    Reported as ``failed`` with the message; sending it again would fail the same way.
    """


class ParserError(CommandRejected):
    """A parser is not allowed, not found, or could not encode/decode."""
