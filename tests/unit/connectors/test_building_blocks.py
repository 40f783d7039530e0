"""Connector building blocks without a broker: offsets, journal, registry, parsers, policy."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from connectors.errors import CommandRejected, ParserError
from connectors.mqtt.transport import MqttTransport, broker_address, check_topic, presence_from
from connectors.offsets import PartitionOffsets
from connectors.parsers import available_parsers, load_parser, parser_name
from connectors.policy import resolve_policy
from connectors.registry import DeviceEntry, DeviceRegistry, parse_registry
from connectors.settings import MqttSettings
from preservarium_pusher_api.core.contract import CommandMessage, DispatchPolicy, utc_now

pytestmark = pytest.mark.unit


def make_command(**overrides: object) -> CommandMessage:
    values: dict[str, object] = {
        "request_id": "7d0c8a4e-4d9b-4c0e-9d8e-1f2a3b4c5d6e",
        "device_id": "pico-w-lab-001",
        "command_type": "control_led",
        "payload": {"pin": 25, "state": True},
        "protocol": "mqtt",
        "created_at": utc_now(),
    }
    values.update(overrides)
    return CommandMessage.model_validate(values)


def test_commit_position_only_moves_past_a_finished_prefix() -> None:
    """Finishing 12 before 11 does not let 12 be committed; finishing 11 commits both."""
    book = PartitionOffsets()
    for offset in (10, 11, 12):
        book.track(offset)
    assert book.finish(10) and book.committable == 11
    assert not book.finish(12) and book.committable == 11
    assert book.finish(11) and book.committable == 13
    assert len(book) == 0
    assert not book.finish(5)  # already committed: ignored


REGISTRY_YAML = """
devices:
  pico-1:
    protocol: mqtt
    dispatch: on_result
    timeout_seconds: 30
  ot2-1:
    protocol: http
    address: {base_url: "http://10.0.0.5:31950"}
    credentials: OT2_TOKEN_FOR_TEST
"""


def test_registry_parses_yaml_and_json() -> None:
    """The same registry reads from YAML and JSON; bad entries are named in the error."""
    devices = parse_registry(REGISTRY_YAML, ".yaml")
    assert devices["pico-1"].dispatch is DispatchPolicy.ON_RESULT
    assert devices["ot2-1"].address["base_url"] == "http://10.0.0.5:31950"
    as_json = json.dumps({"devices": {"pico-1": {"protocol": "mqtt"}}})
    assert parse_registry(as_json, ".json")["pico-1"].protocol.value == "mqtt"
    with pytest.raises(ValueError, match=r"pico-1\.protocol"):
        parse_registry("devices: {pico-1: {protocol: smoke}}", ".yaml")
    with pytest.raises(ValueError):
        parse_registry("devices: {'a/b': {protocol: mqtt}}", ".yaml")


def test_registry_reloads_on_change_and_keeps_the_last_good_one(tmp_path: Path) -> None:
    """An edited file takes effect; a broken edit keeps the previous devices and says why."""
    path = tmp_path / "devices.yaml"
    path.write_text(REGISTRY_YAML)
    registry = DeviceRegistry(path)
    assert registry.load() and registry.get("pico-1") is not None
    path.write_text("devices: {pico-2: {protocol: mqtt}}\n")
    os.utime(path, (time.time() + 5, time.time() + 5))
    assert registry.load()
    assert registry.get("pico-1") is None and registry.get("pico-2") is not None
    path.write_text("devices: [this is: not valid\n")
    os.utime(path, (time.time() + 10, time.time() + 10))
    assert not registry.load()
    assert registry.get("pico-2") is not None and registry.last_error


def test_credentials_come_from_env_or_a_secrets_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A credentials reference resolves from an env var, else a file; missing is an error."""
    entry = DeviceEntry(protocol="http", credentials="OT2_TOKEN_FOR_TEST")
    monkeypatch.setenv("CREDENTIALS_DIR", str(tmp_path))
    with pytest.raises(LookupError):
        entry.secret()
    (tmp_path / "OT2_TOKEN_FOR_TEST").write_text("from-file\n")
    assert entry.secret() == "from-file"
    monkeypatch.setenv("OT2_TOKEN_FOR_TEST", "from-env")
    assert entry.secret() == "from-env"


def test_parser_references_are_names_from_the_allow_list() -> None:
    """Names with or without .py load; paths, dotted names and unknown modules are refused."""
    assert "json_envelope" in available_parsers()
    assert parser_name(None) == parser_name("json_envelope.py") == "json_envelope"
    for ref in ("../json_envelope", "/etc/passwd", "json.tool", "os", "_private", "a\\\\b"):
        with pytest.raises(ParserError):
            load_parser(ref)


def test_default_envelope_is_exactly_the_original_design() -> None:
    """The JSON envelope has exactly request_id, task and parameters."""
    frame = load_parser(None).encode(make_command())
    assert json.loads(frame) == {
        "request_id": "7d0c8a4e-4d9b-4c0e-9d8e-1f2a3b4c5d6e",
        "task": "control_led",
        "parameters": {"pin": 25, "state": True},
    }
    fixture = Path(__file__).parents[2] / "fixtures" / "mqtt_envelope.json"
    assert json.loads(frame) == json.loads(fixture.read_text())


def test_device_answers_decode_to_results_and_errors() -> None:
    """success → ok with the result, error → not ok with the message, junk → ValueError."""
    parser = load_parser(None)
    ok = parser.decode(b'{"request_id": "r1", "task": "t", "status": "success", "result": 3}')
    assert ok.ok and ok.result == 3 and ok.request_id == "r1"
    bad = parser.decode(b'{"request_id": "r2", "status": "error", "error": "boom"}')
    assert not bad.ok and bad.error == "boom"
    for junk in (b"nope", b"[]", b'{"status": "success"}', b'{"request_id": "r", "status": "?"}'):
        with pytest.raises(ValueError):
            parser.decode(junk)


def test_dispatch_policy_precedence() -> None:
    """The registry beats the default; metadata.dispatch may only make it stricter
    (burst → on_ack → on_result); nonsense is rejected."""
    device = DeviceEntry(protocol="mqtt", dispatch="on_result")
    default = DispatchPolicy.ON_ACK
    assert resolve_policy(make_command(), None, default) is DispatchPolicy.ON_ACK
    assert resolve_policy(make_command(), device, default) is DispatchPolicy.ON_RESULT
    burst = make_command(metadata={"dispatch": "burst"})
    assert resolve_policy(burst, device, default) is DispatchPolicy.ON_RESULT
    assert resolve_policy(burst, None, default) is DispatchPolicy.ON_ACK
    stricter = make_command(metadata={"dispatch": "on_result"})
    assert resolve_policy(stricter, None, default) is DispatchPolicy.ON_RESULT
    relaxed = DeviceEntry(protocol="mqtt", dispatch="burst")
    assert resolve_policy(make_command(metadata={"dispatch": "on_ack"}), relaxed, default) is (
        DispatchPolicy.ON_ACK
    )
    with pytest.raises(CommandRejected):
        resolve_policy(make_command(metadata={"dispatch": "whenever"}), device, default)


def test_mqtt_topics_presence_and_broker_urls() -> None:
    """Wildcards and $-topics are refused; presence reads text or JSON; URLs give TLS."""
    assert check_topic("lab/pico/command") == "lab/pico/command"
    for topic in ("lab/+/command", "lab/#", "$SYS/x", "", 5):
        with pytest.raises(CommandRejected):
            check_topic(topic)
    for topic in ("lab/other/result", "lab/other/status"):
        with pytest.raises(CommandRejected, match="result or status"):
            check_topic(topic)
    assert presence_from('{"status": "online"}') is True
    assert presence_from("offline") is False
    assert presence_from("maybe") is None
    assert broker_address("mqtt://broker:1884") == ("broker", 1884, False)
    assert broker_address("mqtts://broker") == ("broker", 8883, True)


@pytest.mark.parametrize(
    ("address", "error"),
    [
        ({}, "has no address.host"),
        ({"host": "a b"}, "is not a host"),
        ({"host": "x/y"}, "is not a host"),
        ({"host": "h", "port": 70000}, "is not a port"),
        ({"host": "h", "path": "no-slash"}, "must start with /"),
    ],
)
def test_coap_target_comes_only_from_a_valid_registry_address(
    address: dict[str, object], error: str
) -> None:
    from connectors.coap.transport import CoapTransport
    from connectors.settings import CoapSettings

    transport = CoapTransport(CoapSettings(_env_file=None))  # type: ignore[call-arg]
    command = CommandMessage(
        request_id="r", device_id="s1", command_type="read_sensor", protocol="coap",
        created_at=utc_now(),
    )  # fmt: skip
    with pytest.raises(CommandRejected, match=error):
        transport.target(command, DeviceEntry(protocol="coap", address=address))
    good = DeviceEntry(protocol="coap", address={"host": "::1", "port": 5684})
    assert transport.target(command, good).uri == "coap://[::1]:5684/read_sensor"
    with pytest.raises(CommandRejected, match="not in the registry"):
        transport.target(command, None)


@pytest.mark.parametrize(
    ("address", "error"),
    [
        ({}, "has no address.base_url"),
        ({"base_url": "ftp://robot"}, "must be an http"),
        ({"base_url": "http://robot", "path": "/run"}, "must contain {command_type}"),
    ],
)
def test_http_target_comes_only_from_a_valid_registry_address(
    address: dict[str, object], error: str
) -> None:
    from connectors.http.transport import HttpTransport
    from connectors.settings import HttpSettings

    transport = HttpTransport(HttpSettings(_env_file=None))  # type: ignore[call-arg]
    command = CommandMessage(
        request_id="r", device_id="ot2", command_type="home", protocol="http",
        created_at=utc_now(),
    )  # fmt: skip
    with pytest.raises(CommandRejected, match=error):
        transport.target(command, DeviceEntry(protocol="http", address=address))
    missing = DeviceEntry(
        protocol="http", address={"base_url": "http://robot:31960"}, credentials="NO_SUCH_VAR_X"
    )
    with pytest.raises(CommandRejected, match="credential 'NO_SUCH_VAR_X' is not set"):
        transport.target(command, missing)
    good = DeviceEntry(protocol="http", address={"base_url": "https://robot:31960/"})
    assert transport.target(command, good).url == "https://robot:31960/execute/home"


def test_metadata_topic_only_from_the_registry_and_never_another_device() -> None:
    """metadata.topic is published to only when the registry lists it for the device."""
    transport = MqttTransport(MqttSettings(_env_file=None, mqtt_topic_prefix="lab"))  # type: ignore[call-arg]
    plain = DeviceEntry(protocol="mqtt")
    listed = DeviceEntry(
        protocol="mqtt", allowed_topics=("lab/pico-1/display", "lab/pico-2/command", "bench/all")
    )

    def target(topic: str | None, device: DeviceEntry | None) -> str:
        metadata = {} if topic is None else {"topic": topic}
        return transport.target(make_command(device_id="pico-1", metadata=metadata), device)

    assert target(None, None) == "lab/pico-1/command"
    assert target("lab/pico-1/command", None) == "lab/pico-1/command"
    assert target("lab/pico-1/display", listed) == "lab/pico-1/display"
    assert target("bench/all", listed) == "bench/all"
    for topic, device in (
        ("lab/pico-1/display", None),
        ("lab/pico-1/display", plain),
        ("lab/pico-2/command", None),
        ("lab/pico-2/command", listed),  # listed, yet another device's namespace
        ("lab/pico-2/result", listed),
    ):
        with pytest.raises(CommandRejected):
            target(topic, device)
    with pytest.raises(ValueError, match="result or status"):
        DeviceEntry(protocol="mqtt", allowed_topics=("lab/pico-1/result",))


def test_a_publish_the_mqtt_client_refused_counts_as_not_sent() -> None:
    """aiomqtt raises "Could not publish message" when the client refused the publish
    before writing anything (its str() shows only the code, e.g. not connected): safe to
    send again. Any other publish error leaves the outcome unknown: never sent again."""
    import aiomqtt

    from connectors.mqtt.transport import MqttTransport

    refused = aiomqtt.MqttCodeError(4, "Could not publish message")
    assert "Could not publish" not in str(refused)  # why the arguments are read
    assert not MqttTransport._was_queued(refused)
    assert MqttTransport._was_queued(aiomqtt.MqttCodeError(7, "Unexpected disconnection"))
