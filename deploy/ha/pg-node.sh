#!/bin/sh
# One pg_auto_failover process in a container: `pg-node monitor` or `pg-node postgres --monitor URI`.
# Created on the first start (a node registers with the monitor: the first becomes the primary,
# the next clones it and becomes its synchronous standby), then run. pg_autoctl writes the HBA
# rules the nodes need among themselves; the clients (the orchestrator, the participants) are let
# in from the same network below, trusted as in the single-node stack: put real authentication
# (and TLS) in front of a production cluster.
set -eu
role=$1
shift
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  pg_autoctl create "$role" --pgdata "$PGDATA" --pgport "${PGPORT:-5432}" --auth trust --no-ssl \
    --hostname "${NODE_HOSTNAME:-$(hostname)}" "$@"
  printf 'host all all samenet trust\nhost replication all samenet trust\n' >> "$PGDATA/pg_hba.conf"
fi
exec pg_autoctl run --pgdata "$PGDATA"
