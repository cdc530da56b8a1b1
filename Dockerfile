# One image for the orchestrator and the example participants (they differ only in the command).
FROM python:3.11-slim

WORKDIR /app
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
# Installed as a user installs it: a wheel, not editable, built from /src and /src then removed,
# so every process here (`python -m participants` in /app included) runs what the wheel carries,
# the migrations mapped into the package among it. tests/integration/test_wheel_install.py builds
# its wheel from exactly what is copied here.
COPY pyproject.toml README.md /src/
COPY orchestrator /src/orchestrator
COPY participants /src/participants
COPY migrations /src/migrations
RUN pip install /src && rm -rf /src

# The REST API listens on all interfaces inside the container; it needs ORCHESTRATOR_API_TOKEN
# (or `run --insecure`) to start.
ENV ORCHESTRATOR_API_HOST=0.0.0.0 ORCHESTRATOR_API_PORT=8000
EXPOSE 8000

# `orchestrator migrate` runs first (its own step, not inside the service's event loop).
CMD ["sh", "-c", "orchestrator migrate && exec orchestrator run"]
