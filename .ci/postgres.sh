#!/usr/bin/env bash
# Install (if needed) and start a PostgreSQL server on 127.0.0.1 for the tests, with a role and
# database `lab`. Prints the storage URL on its last line.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
if ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
  apt-get update -q >/dev/null
  apt-get install -y -q postgresql >/dev/null
fi
if command -v pg_lsclusters >/dev/null && [ -n "$(pg_lsclusters -h 2>/dev/null)" ]; then
  read -r ver cluster _ < <(pg_lsclusters -h | head -n 1)
  pg_ctlcluster "$ver" "$cluster" start 2>/dev/null || true
else
  service postgresql start >/dev/null
fi
for _ in $(seq 30); do
  su postgres -c "psql -qAtc 'select 1'" >/dev/null 2>&1 && break
  sleep 1
done
su postgres -c "psql -qAtc \"select 1 from pg_roles where rolname='lab'\"" | grep -q 1 \
  || su postgres -c "psql -qc \"create role lab login password 'lab'\""
su postgres -c "psql -qAtc \"select 1 from pg_database where datname='lab'\"" | grep -q 1 \
  || su postgres -c "createdb -O lab lab"
echo "postgresql://lab:lab@127.0.0.1:5432/lab"
