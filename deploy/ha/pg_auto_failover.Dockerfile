# PostgreSQL 15 with pg_auto_failover, from Debian's packages: the same ones `make failover-tools`
# installs for the failover test (tests/integration/test_database_failover.py).
FROM debian:bookworm-slim
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        postgresql-15 postgresql-15-auto-failover pg-auto-failover-cli \
    && rm -rf /var/lib/apt/lists/*
COPY pg-node.sh /usr/local/bin/pg-node
ENV PATH=/usr/lib/postgresql/15/bin:$PATH PGDATA=/var/lib/postgresql/data
USER postgres
ENTRYPOINT ["pg-node"]
