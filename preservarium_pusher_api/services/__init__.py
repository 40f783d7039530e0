"""What the API does, independent of HTTP: commands (submit, batch, idempotency, cancel),
producing to Kafka, the status side (queued writes, long-poll wake-ups) and the tracker."""
