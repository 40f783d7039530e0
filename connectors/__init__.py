"""Protocol connectors: consume the commands topic, deliver to devices, report status.

Each protocol runs as its own process and consumer group; they share one runtime and the
wire contract in ``preservarium_pusher_api.core.contract``.
"""
