"""A saga orchestrator on RabbitMQ and PostgreSQL."""
