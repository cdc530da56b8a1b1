"""Example participants: real services that answer the orchestrator's commands over RabbitMQ."""
