"""MQTT connector: ``pusher connector mqtt`` or ``python -m connectors.mqtt``."""

from connectors.mqtt.transport import MqttTransport

__all__ = ["MqttTransport"]
