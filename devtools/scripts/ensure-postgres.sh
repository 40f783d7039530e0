#!/usr/bin/env bash
# A PostgreSQL on 127.0.0.1:5432 with trust on loopback, for the tests and the benchmark:
# used as is when one answers, else Debian's package is installed (as root) and a local
# cluster started in the background.
set -euo pipefail
pg_up() { command -v pg_isready >/dev/null 2>&1 && pg_isready -q -h 127.0.0.1 -p 5432; }
pg_up && exit 0
if ! command -v pg_ctlcluster >/dev/null 2>&1; then
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends postgresql
fi
pg_up && exit 0
version=$( (ls /etc/postgresql 2>/dev/null || true) | sort -V | tail -1)
if [ -z "$version" ]; then
  version=$( (ls /usr/lib/postgresql 2>/dev/null || true) | sort -V | tail -1)
  pg_createcluster "$version" main
fi
hba="/etc/postgresql/$version/main/pg_hba.conf"
if ! grep -q "pusher-ci" "$hba"; then
  sed -i '1i host all all 127.0.0.1/32 trust # pusher-ci\nlocal all postgres trust # pusher-ci' "$hba"
fi
pg_ctlcluster "$version" main start || pg_ctlcluster "$version" main reload
for _ in $(seq 1 30); do pg_up && exit 0; sleep 1; done
echo "PostgreSQL did not start" >&2
exit 1
