# One image for the orchestrator and the example participants (they differ only in the command).
FROM python:3.11-slim

WORKDIR /app
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
COPY pyproject.toml README.md ./
COPY orchestrator ./orchestrator
COPY participants ./participants
COPY migrations ./migrations
RUN pip install -e .

# The REST API listens on all interfaces inside the container; it needs ORCHESTRATOR_API_TOKEN
# (or `run --insecure`) to start.
ENV ORCHESTRATOR_API_HOST=0.0.0.0 ORCHESTRATOR_API_PORT=8000
EXPOSE 8000

# `orchestrator migrate` runs first (its own step, not inside the service's event loop).
CMD ["sh", "-c", "orchestrator migrate && exec orchestrator run"]
