#!/usr/bin/env bash
# Drain throughput of 10,000 and 100,000 no-op jobs (JOBS) with 1 and 4 worker processes (PROCS),
# and enqueue-to-start latency with an idle worker, on each durable backend
# (`qml bench`; figures in docs/benchmarks.md). Each run uses its own PostgreSQL
# schema / Redis key prefix / SQLite file and removes it afterwards.
#
#   benchmarks/matrix.sh [postgres redis sqlite]
#   JOBS="10000" PROCS="1 2 4" benchmarks/matrix.sh   # other job and process counts
set -u
cd "$(dirname "$0")/.."
QML=${QML:-.venv/bin/qml}
PG=${PG_DSN:-postgresql://postgres@127.0.0.1:5432/test}
REDIS=${REDIS_URL:-redis://127.0.0.1:6379/7}
JOBS=${JOBS:-10000 100000}
PROCS=${PROCS:-1 4}
for backend in "${@:-postgres redis sqlite}"; do
  for backend1 in $backend; do
    for n in $JOBS; do
      for p in $PROCS; do
        tag=b$(date +%s%N | tail -c 9)
        case $backend1 in
          postgres) url="$PG?qml_schema=bench_$tag";;
          redis) url="$REDIS?key_prefix=bench$tag";;
          sqlite) db=$(mktemp -u /tmp/qml-bench-XXXXXX.db); url="sqlite:///$db";;
          *) echo "unknown backend $backend1"; exit 2;;
        esac
        lat=""; [ "$n" = 10000 ] && [ "$p" = 1 ] && lat="--latency"
        echo "== $backend1 jobs=$n processes=$p $(date -u +%FT%TZ) load $(cut -d" " -f1-3 /proc/loadavg)"
        timeout 900 "$QML" bench --storage "$url" -n "$n" -p "$p" $lat
        case $backend1 in
          postgres) psql -q "$PG" -c "DROP SCHEMA IF EXISTS bench_$tag CASCADE" ;;
          redis) redis-cli -u "$REDIS" --scan --pattern "*bench$tag*" \
                   | xargs -r -n 1000 redis-cli -u "$REDIS" DEL > /dev/null ;;
          sqlite) rm -f "$db" "$db-wal" "$db-shm" ;;
        esac
      done
    done
  done
done
