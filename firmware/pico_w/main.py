# Pico W entry point: Wi-Fi + MQTT with mqtt_as, commands in, answers out, forever.
# mqtt_as reconnects by itself; an OSError never ends the program.
import asyncio

from config import config
from device import Device
from mqtt_as import MQTTClient
from mqtt_as import config as mqtt_config
from tasks import TASKS


def build_client(device):
    mqtt_config["server"] = config["server"]
    mqtt_config["port"] = config["port"]
    mqtt_config["user"] = config["user"]
    mqtt_config["password"] = config["password"]
    mqtt_config["ssl"] = config["ssl"]
    mqtt_config["ssid"] = config["ssid"]
    mqtt_config["wifi_pw"] = config["wifi_pw"]
    mqtt_config["client_id"] = device.device_id
    mqtt_config["keepalive"] = config["keepalive"]
    mqtt_config["clean"] = False  # the broker keeps commands sent while the board is away
    mqtt_config["queue_len"] = 4  # event interface: async for ... in client.queue
    mqtt_config["will"] = (device.status_topic, '{"status": "offline"}', True, 1)
    return MQTTClient(mqtt_config)


async def keep_announcing(client, device):
    while True:
        await client.up.wait()
        client.up.clear()
        try:
            await device.on_connect(client)
        except OSError:
            pass  # connection dropped again; the next "up" retries


async def main():
    device = Device(config, TASKS)
    client = build_client(device)
    delay = 1
    while True:
        try:
            await client.connect()
            break
        except OSError:
            await asyncio.sleep(delay)
            delay = min(delay * 2, 60)
    tasks = [asyncio.create_task(keep_announcing(client, device))]
    while True:
        try:
            await device.serve(client)
        except OSError:
            await asyncio.sleep(1)
        if tasks[0].done():  # should never end; start it again if it does
            tasks[0] = asyncio.create_task(keep_announcing(client, device))


try:
    asyncio.run(main())
finally:
    asyncio.new_event_loop()
