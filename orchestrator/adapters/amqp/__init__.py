"""RabbitMQ: the consumer and the publisher (``broker``), teaching the client to decode any
bytes (``decoding``), and the exchanges and queues with their migrations (``topology``)."""
