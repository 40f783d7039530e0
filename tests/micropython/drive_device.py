# Drives the firmware's Device through a connection and a list of commands under MicroPython,
# then prints what it published, one JSON line per message, and what it did to the pins.
import json
import sys

import machine
import mqtt_as
from config import config
from device import Device
from tasks import TASKS

config["device_id"] = "pico-w-lab-001"
config["topic_prefix"] = "lab"
device = Device(config, TASKS)
client = mqtt_as.MQTTClient(mqtt_as.config)
commands = [
    {"request_id": "r-led", "task": "control_led", "parameters": {"pin": 25, "state": True}},
    {"request_id": "r-led", "task": "control_led", "parameters": {"pin": 25, "state": True}},
    {"request_id": "r-servo", "task": "move_servo", "parameters": {"pin": 15, "angle": 300}},
    {"request_id": "r-unknown", "task": "dance", "parameters": {}},
    {"request_id": "r-args", "task": "control_led", "parameters": {"pin": 25}},
    {"request_id": "r-adc", "task": "read_sensor", "parameters": {"sensor_pin": 26}},
    {"request_id": "r-status", "task": "get_device_status", "parameters": {}},
]
for command in commands:
    client.queue.items.append(("lab/pico-w-lab-001/command", json.dumps(command), False))
client.queue.items.append(("lab/pico-w-lab-001/command", b"not json", False))

await device.on_connect(client)
await device.serve(client)

print(json.dumps({"implementation": sys.implementation.name}))
print(json.dumps({"subscribed": mqtt_as.SUBSCRIBED}))
for topic, msg, retain, qos in mqtt_as.PUBLISHED:
    print(json.dumps({"topic": topic, "msg": msg, "retain": retain, "qos": qos}))
print(json.dumps({"machine": machine.LOG}))
