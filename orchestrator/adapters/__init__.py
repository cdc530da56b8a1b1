"""The adapters: PostgreSQL (``postgres``: the store, its schema and the REST read model's
queries), the in-memory store (``memory``: the test kit's), RabbitMQ (``amqp``: the consumer and
publisher, the client's decoding, the topology), and Prometheus (``metrics``)."""
