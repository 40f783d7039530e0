"""The shared core: what the API, the tracker and every connector agree on.

It holds the Kafka wire contract (``contract``), Kafka connection and consumer options
(``kafka``), the base settings (``settings``: Kafka and logging), logging, backoff and the
error root (``errors``). It imports nothing of the project above it: no FastAPI, no
status store, no connector. Importing it stays cheap (pydantic, structlog).
"""
