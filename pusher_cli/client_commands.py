"""``pusher send|status|list|cancel|devices|watch``: the API from a shell, on ``PusherClient``.

Readable tables for people, ``--json`` for scripts. ``PUSHER_URL`` (default
``http://localhost:8000``) and ``PUSHER_API_KEY`` configure it, or ``--url``/``--api-key``.

Exit codes:

    0  accepted (send), succeeded (send --wait, status --watch), or the listing worked
    1  the command ended without success: failed, timed_out, expired, cancelled
    2  usage: bad flags, a payload that is not a JSON object
    3  rejected by the API (validation, unknown command, not cancellable)
    4  unauthorized (API key missing or wrong)
    5  API or Kafka unavailable, or rate limited, after the retries
    6  --wait ran out before the command ended
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel

from preservarium_pusher_api.client import (
    DEFAULT_URL,
    CommandRejected,
    Event,
    PusherClient,
    PusherClientError,
    RateLimited,
    ResultTimeout,
    ServiceUnavailable,
    Unauthorized,
)
from preservarium_pusher_api.models import CommandStatusResponse

EXIT_OK, EXIT_UNSUCCESSFUL, EXIT_USAGE, EXIT_REJECTED = 0, 1, 2, 3
EXIT_UNAUTHORIZED, EXIT_UNAVAILABLE, EXIT_STILL_RUNNING = 4, 5, 6


def _print_json(value: BaseModel | dict[str, Any]) -> None:
    data = value.model_dump(mode="json") if isinstance(value, BaseModel) else value
    print(json.dumps(data, indent=2, ensure_ascii=False))


def _table(rows: list[list[str]], headers: list[str]) -> str:
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows, strict=True)]
    lines = ["  ".join(h.upper().ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines += [
        "  ".join(str(cell).ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
    return "\n".join(lines)


def _when(value: Any) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value is not None else "-"


def _status_exit(status: CommandStatusResponse) -> int:
    if status.status == "succeeded" or not status.status.is_terminal:
        return EXIT_OK
    return EXIT_UNSUCCESSFUL


def _describe(status: CommandStatusResponse) -> str:
    lines = [
        f"{status.request_id}  {status.device_id}  {status.command_type or '-'}  "
        f"{status.status.value}"
    ]
    if status.detail:
        lines.append(f"reason: {status.detail}")
    if status.result is not None:
        lines.append(f"result: {json.dumps(status.result, ensure_ascii=False)}")
    lines.append(" → ".join(item.status for item in status.history))
    return "\n".join(lines)


def _follow(
    client: PusherClient, request_id: str, seconds: float, show: Callable[[str], None]
) -> CommandStatusResponse:
    """Long-poll until the command ends or ``seconds`` pass, showing each new status."""
    deadline = time.monotonic() + seconds
    status = client.get_status(request_id)
    show(f"{_when(status.updated_at)}  {status.status.value}")
    while not status.status.is_terminal:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise ResultTimeout(f"still {status.status.value} after {seconds:g} s", status)
        status = client.get_status(request_id, wait=remaining, last_status=status.status)
        show(f"{_when(status.updated_at)}  {status.status.value}")
    return status


def cmd_send(client: PusherClient, args: argparse.Namespace) -> int:
    try:
        payload = json.loads(args.payload)
    except ValueError as exc:
        print(f"pusher send: --payload is not JSON: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if not isinstance(payload, dict):
        print("pusher send: --payload must be a JSON object", file=sys.stderr)
        return EXIT_USAGE
    try:
        metadata = json.loads(args.metadata) if args.metadata else None
    except ValueError as exc:
        print(f"pusher send: --metadata is not JSON: {exc}", file=sys.stderr)
        return EXIT_USAGE
    fields: dict[str, Any] = {
        "metadata": metadata,
        "timeout_seconds": args.timeout,
        "ttl_seconds": args.ttl,
        "parser_script_ref": args.parser,
        "confirmable": args.confirmable,
    }
    accepted = client.send_command(
        args.device, args.type, args.protocol, payload, idempotency_key=args.idempotency_key,
        **{key: value for key, value in fields.items() if value is not None},
    )  # fmt: skip
    if args.wait is None:
        if args.json:
            _print_json(accepted)
        else:
            print(f"accepted {accepted.request_id} (partition {accepted.partition}, "
                  f"offset {accepted.offset})")  # fmt: skip
        return EXIT_OK
    quiet = args.json
    if not quiet:
        print(f"accepted {accepted.request_id}")
    final = _follow(client, accepted.request_id, args.wait, (lambda _: None) if quiet else print)
    if quiet:
        _print_json(final)
    else:
        print(_describe(final))
    return _status_exit(final)


def cmd_status(client: PusherClient, args: argparse.Namespace) -> int:
    if args.watch:
        final = _follow(
            client, args.request_id, args.timeout, (lambda _: None) if args.json else print
        )
    else:
        final = client.get_status(args.request_id)
    if args.json:
        _print_json(final)
    else:
        print(_describe(final))
    return _status_exit(final)


def cmd_list(client: PusherClient, args: argparse.Namespace) -> int:
    page = client.list_commands(device_id=args.device, status=args.status, limit=args.limit)
    if args.json:
        _print_json(page)
        return EXIT_OK
    rows = [
        [item.request_id, item.device_id, item.command_type or "-", item.status.value,
         _when(item.updated_at), (item.detail or "")[:60]]
        for item in page.items
    ]  # fmt: skip
    print(_table(rows, ["request_id", "device", "type", "status", "updated", "detail"]))
    return EXIT_OK


def cmd_cancel(client: PusherClient, args: argparse.Namespace) -> int:
    answer = client.cancel(args.request_id)
    if args.json:
        _print_json(answer)
    else:
        print(f"{answer.request_id}: {answer.message}")
    return EXIT_OK


def cmd_devices(client: PusherClient, args: argparse.Namespace) -> int:
    listing = client.devices()
    if args.json:
        _print_json(listing)
        return EXIT_OK
    rows = [
        [d.device_id, d.protocol or "-",
         {True: "online", False: "offline", None: "unknown"}[d.online],
         _when(d.last_seen), str(d.pending_commands)]
        for d in listing.items
    ]  # fmt: skip
    print(_table(rows, ["device", "protocol", "presence", "last_seen", "pending"]))
    return EXIT_OK


def _event_line(event: Event) -> str:
    data = event.data
    at = str(data.get("at", ""))[:23].replace("T", " ")
    if event.kind == "presence":
        online = data.get("online")
        state = "unknown" if online is None else "online" if online else "offline"
        return f"{at}  {event.device_id}  presence  {state}"
    line = (
        f"{at}  {event.device_id}  {data.get('command_type') or '-'}  "
        f"{event.request_id}  {event.status}"
    )
    if data.get("detail"):
        line += f"  ({data['detail']})"
    if data.get("result") is not None:
        line += f"  result: {json.dumps(data['result'], ensure_ascii=False)}"
    return line


def cmd_watch(client: PusherClient, args: argparse.Namespace) -> int:
    seen = 0
    try:
        for event in client.events(
            device_id=args.device, request_id=args.request_id, status=args.status
        ):
            if args.json:
                record = {"event": event.kind, "id": event.id, "data": event.data}
                print(json.dumps(record, ensure_ascii=False), flush=True)
            else:
                print(_event_line(event), flush=True)
            seen += 1
            if args.count and seen >= args.count:
                break
    except KeyboardInterrupt:
        pass
    return EXIT_OK


def add_client_commands(commands: Any) -> None:
    """Add send/status/list/cancel/devices to the ``pusher`` parser."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", default=os.environ.get("PUSHER_URL", DEFAULT_URL),
                        help="API base URL (PUSHER_URL)")  # fmt: skip
    common.add_argument("--api-key", default=os.environ.get("PUSHER_API_KEY"),
                        help="API key (PUSHER_API_KEY)")  # fmt: skip
    common.add_argument("--json", action="store_true", help="JSON output for scripts")

    send = commands.add_parser("send", parents=[common], help="send a command")
    send.add_argument("--device", required=True, help="device_id")
    send.add_argument("--type", required=True, help="command_type")
    send.add_argument("--protocol", required=True, choices=["mqtt", "http", "coap"])
    send.add_argument("--payload", default="{}", help="parameters as a JSON object")
    send.add_argument("--wait", type=float, metavar="SECONDS",
                      help="wait up to SECONDS for the end; the exit code says how")  # fmt: skip
    send.add_argument("--timeout", type=float, help="timeout_seconds for the device's answer")
    send.add_argument("--ttl", type=int, help="ttl_seconds: expire if not sent by then")
    send.add_argument("--parser", help="parser_script_ref")
    send.add_argument(
        "--metadata", help='metadata as a JSON object, e.g. {"dispatch": "on_result"}'
    )
    send.add_argument("--confirmable", action=argparse.BooleanOptionalAction, default=None,
                      help="CoAP CON (default) or NON")  # fmt: skip
    send.add_argument("--idempotency-key", help="repeat-safe key (default: one per call)")
    send.set_defaults(client_handler=cmd_send)

    status = commands.add_parser("status", parents=[common], help="a command's status")
    status.add_argument("request_id")
    status.add_argument("--watch", action="store_true", help="follow until it ends")
    status.add_argument("--timeout", type=float, default=300.0, help="--watch gives up after this")
    status.set_defaults(client_handler=cmd_status)

    listing = commands.add_parser("list", parents=[common], help="recent commands")
    listing.add_argument("--device", help="only this device")
    listing.add_argument("--status", help="only this status")
    listing.add_argument("--limit", type=int, default=20)
    listing.set_defaults(client_handler=cmd_list)

    cancel = commands.add_parser("cancel", parents=[common], help="cancel a queued command")
    cancel.add_argument("request_id")
    cancel.set_defaults(client_handler=cmd_cancel)

    devices = commands.add_parser("devices", parents=[common], help="devices and presence")
    devices.set_defaults(client_handler=cmd_devices)

    watch = commands.add_parser(
        "watch", parents=[common], help="print status and presence events as they happen"
    )
    watch.add_argument("--device", action="append", help="only this device (repeatable)")
    watch.add_argument("--request-id", action="append", help="only this command (repeatable)")
    watch.add_argument("--status", action="append", help="only this status (repeatable)")
    watch.add_argument("--count", type=int, help="stop after this many events")
    watch.set_defaults(client_handler=cmd_watch)

    for parser in (send, status, listing, cancel, devices, watch):
        parser.set_defaults(handler=run_client_command)


def run_client_command(args: argparse.Namespace) -> int:
    """Run one client subcommand; errors become a message and an exit code."""
    try:
        with PusherClient(args.url, api_key=args.api_key) as client:
            code: int = args.client_handler(client, args)
            return code
    except ResultTimeout as exc:
        print(f"pusher {args.command}: {exc.message}", file=sys.stderr)
        return EXIT_STILL_RUNNING
    except Unauthorized as exc:
        print(f"pusher {args.command}: unauthorized: {exc.message}", file=sys.stderr)
        return EXIT_UNAUTHORIZED
    except CommandRejected as exc:
        details = "; ".join(
            f"{'.'.join(str(p) for p in d.get('loc', []))}: {d.get('msg', '')}".strip(": ")
            for d in exc.details
        )
        print(f"pusher {args.command}: rejected: {exc.message}"
              + (f" ({details})" if details else ""), file=sys.stderr)  # fmt: skip
        return EXIT_REJECTED
    except (ServiceUnavailable, RateLimited) as exc:
        print(f"pusher {args.command}: unavailable: {exc.message}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except PusherClientError as exc:  # pragma: no cover - every subclass is handled above
        print(f"pusher {args.command}: {exc.message}", file=sys.stderr)
        return EXIT_UNAVAILABLE
