# Stand-in for mqtt_as: the firmware's calls are recorded, incoming messages are scripted.
import asyncio

config = {"server": None, "port": 0, "client_id": "", "will": None, "clean": True}
PUBLISHED = []
SUBSCRIBED = []


class _Queue:
    def __init__(self):
        self.items = []

    def __aiter__(self):
        return self

    async def __anext__(self):
        if not self.items:
            raise StopAsyncIteration
        await asyncio.sleep(0)
        return self.items.pop(0)


class MQTTClient:
    def __init__(self, settings):
        self.settings = dict(settings)
        self.queue = _Queue()
        self.up = asyncio.Event()

    async def connect(self):
        self.up.set()

    async def subscribe(self, topic, qos=0):
        SUBSCRIBED.append((topic, qos))

    async def publish(self, topic, msg, retain=False, qos=0):
        PUBLISHED.append((topic, msg, retain, qos))
