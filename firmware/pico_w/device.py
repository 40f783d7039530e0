# Command handling of the board: envelope in, answer out, each request_id run at most once.
import gc
import json
import time


class Device:
    def __init__(self, config, tasks):
        self.device_id = config["device_id"]
        base = "{}/{}/".format(config["topic_prefix"], self.device_id)
        self.command_topic = base + "command"
        self.result_topic = base + "result"
        self.status_topic = base + "status"
        self.tasks = tasks
        self._limit = config.get("recent_requests", 32)
        self._recent = []  # [(request_id, answer bytes)], oldest first

    def remembered(self, request_id):
        for known, answer in self._recent:
            if known == request_id:
                return answer
        return None

    def handle(self, msg):
        """Run one command envelope; returns the answer bytes, or None for junk."""
        try:
            envelope = json.loads(msg)
            request_id = envelope["request_id"]
            name = envelope["task"]
        except (ValueError, KeyError, TypeError):
            return None
        answer = self.remembered(request_id)
        if answer is not None:
            return answer  # already run: answer again, never run twice
        reply = {"request_id": request_id, "task": name}
        try:
            function = self.tasks.get(name)
            if function is None:
                raise ValueError(f"Task '{name}' not found")
            reply["result"] = function(**envelope.get("parameters", {}))
            reply["status"] = "success"
        except Exception as exc:  # a task error is an answer, never a crash
            reply.pop("result", None)
            reply["status"] = "error"
            reply["error"] = str(exc)
        reply["timestamp"] = time.time()
        answer = json.dumps(reply)
        self._recent.append((request_id, answer))
        if len(self._recent) > self._limit:
            self._recent.pop(0)
        gc.collect()
        return answer

    async def on_connect(self, client):
        """After every (re)connection: subscribe and say online (retained)."""
        await client.subscribe(self.command_topic, 1)
        await client.publish(self.status_topic, '{"status": "online"}', True, 1)

    async def serve(self, client):
        """Answer every command from the client's message queue."""
        async for _topic, msg, _retained in client.queue:
            answer = self.handle(msg)
            if answer is not None:
                await client.publish(self.result_topic, answer, False, 1)
