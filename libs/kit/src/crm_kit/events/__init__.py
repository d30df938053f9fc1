"""The event backbone: transactional outbox, relay to JetStream, durable consumers with an inbox."""
