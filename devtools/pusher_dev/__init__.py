"""Dev-only tools: simulated devices running the firmware's own logic, the embedded
Kafka-compatible broker and private Mosquitto runners, and the ``pusher dev`` stack.

Installed from a checkout (``make dev``, ``make test``); never part of the production wheel.
"""
