# One image for the orchestrator and the example participants (they differ only in the command).
FROM python:3.11-slim

WORKDIR /app
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
COPY pyproject.toml README.md ./
COPY orchestrator ./orchestrator
COPY participants ./participants
COPY migrations ./migrations
RUN pip install -e .

# `orchestrator migrate` runs first (its own step, not inside the service's event loop).
CMD ["sh", "-c", "orchestrator migrate && exec orchestrator run"]
