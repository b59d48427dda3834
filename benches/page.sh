#!/usr/bin/env bash
# The status page under load: the targets of issue 12. Prints one line per figure;
# docs/performance.md records them with the machine they came from.
#
#   cargo build --release --bin deploylite && benches/page.sh [--bin PATH] [--runs 10000]
#       [--rate 1000] [--seconds 20] [--log-lines 1000000]
#
# A daemon (release build, SQLite, no repositories) gets a store of --runs finished runs (10
# repositories, 5 pipelines, 5 stages each; written with sqlite3 while it is stopped) and three
# logs: --log-lines lines, 10,000 lines and 10 lines. Then `wrk` (from this second process, a
# Lua script paces it to about --rate requests/s: C connections each waiting C*1000/rate ms
# between requests; wrk reports latency from send to answer) measures, one after the other:
#   run-page   GET /runs/{random id}                 (the DAG page)
#   api-run    GET /api/v1/runs/{random id}          (JSON with stages)
#   api-list   GET /api/v1/runs?repo=…&limit=50       (JSON list)
#   home       GET /                                 (latest run per pipeline and ref)
#   log-huge   GET /runs/{id}/stages/build?attempt=1 (the --log-lines log's page)
# and prints p50/p95/p99, the rate reached and errors; the page sizes of the three logs (the
# huge and the 10,000-line one must be the same size: 5,000 lines each); the daemon's RSS
# (VmRSS after the load, VmHWM = its peak) read from /proc.
set -euo pipefail

bin=${CARGO_TARGET_DIR:-$HOME/.cache/deploylite-target}/release/deploylite
runs=10000
rate=1000
seconds=20
log_lines=1000000
while [ $# -gt 0 ]; do
  case "$1" in
    --bin) bin=$2; shift 2 ;;
    --runs) runs=$2; shift 2 ;;
    --rate) rate=$2; shift 2 ;;
    --seconds) seconds=$2; shift 2 ;;
    --log-lines) log_lines=$2; shift 2 ;;
    *) echo "usage: $0 [--bin PATH] [--runs N] [--rate N] [--seconds N] [--log-lines N]" >&2; exit 2 ;;
  esac
done
for tool in wrk sqlite3 curl awk; do
  command -v "$tool" >/dev/null || { echo "$tool is missing (apt-get install wrk sqlite3 curl)" >&2; exit 2; }
done
[ -x "$bin" ] || { echo "no binary at $bin: run cargo build --release --bin deploylite first" >&2; exit 2; }
bin=$(realpath "$bin")
work=$(mktemp -d "${BENCH_TMP:-/var/tmp}/deploylite-page-bench.XXXXXX")
# Stages of a root daemon run as `nobody`, who must pass through to the workspaces.
chmod 711 "$work"
pid=""

cleanup() {
  set +e
  if [ -n "$pid" ] && grep -qaF "$bin" "/proc/$pid/cmdline" 2>/dev/null; then
    kill -TERM "$pid"
    for _ in $(seq 1 50); do [ -d "/proc/$pid" ] || break; sleep 0.1; done
  fi
  rm -rf "$work"
}
trap cleanup EXIT

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
url=http://127.0.0.1:$port
cat >"$work/deploylite.yaml" <<EOF
listen: 127.0.0.1:$port
data_dir: $work/data
repos: []
EOF

start() {
  "$bin" serve --config "$work/deploylite.yaml" 2>>"$work/daemon.log" &
  pid=$!
  for _ in $(seq 1 200); do
    curl -fsS "$url/healthz" >/dev/null 2>&1 && return 0
    sleep 0.05
  done
  echo "the daemon did not start:" >&2
  cat "$work/daemon.log" >&2
  exit 1
}
stop() {
  kill -TERM "$pid"
  wait "$pid" || true
  pid=""
}

# 1. The schema, from a first start; then the runs, written while the daemon is stopped.
start
stop
db=$work/data/deploylite.db
now=$(date +%s%3N)
sqlite3 "$db" <<SQL
PRAGMA journal_mode=WAL;
BEGIN;
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < $runs)
INSERT INTO runs (repo, pipeline, pipeline_file, commit_sha, git_ref, trigger, status, concurrency,
                  created_at, started_at, finished_at)
SELECT 'repo' || (i % 10), 'ci' || (i % 5), '.deploylite/pipelines/ci.yaml', printf('%040x', i),
       CASE WHEN i % 3 = 0 THEN 'refs/heads/main' ELSE 'refs/heads/feature-' || (i % 40) END, 'push',
       CASE WHEN i % 7 = 0 THEN 'failed' ELSE 'success' END, 'queue',
       $now - ($runs - i) * 60000, $now - ($runs - i) * 60000 + 1000, $now - ($runs - i) * 60000 + 95000
FROM n;
INSERT INTO stages (run_id, name, position, status, attempt, needs, started_at, finished_at, exit_code)
SELECT r.id, s.name, s.position, CASE WHEN r.status = 'failed' AND s.name = 'package' THEN 'failed' ELSE 'success' END,
       1, s.needs, r.started_at + s.position * 1000, r.started_at + s.position * 1000 + 20000, 0
FROM runs r CROSS JOIN (
  SELECT 'build' AS name, 0 AS position, '[]' AS needs
  UNION ALL SELECT 'unit-tests', 1, '["build"]'
  UNION ALL SELECT 'integration-tests', 2, '["build"]'
  UNION ALL SELECT 'lint', 3, '[]'
  UNION ALL SELECT 'package', 4, '["unit-tests","integration-tests","lint"]') s;
INSERT INTO stage_attempts (run_id, stage, attempt, status, exit_code, executor, started_at, finished_at)
SELECT run_id, name, 1, status, 0, 'local', started_at, finished_at FROM stages;
COMMIT;
SQL
last=$(sqlite3 "$db" "SELECT MAX(id) FROM runs")
write_log() { # run lines
  mkdir -p "$work/data/logs/$1"
  awk -v n="$2" 'BEGIN { for (i = 0; i < n; i++) printf "2026-12-07T19:00:00.000Z out step %d: \033[32mok\033[0m compiled module_%d in 0.01s\n", i, i }' \
    >"$work/data/logs/$1/build@1.log"
}
write_log "$last" "$log_lines"
write_log $((last - 1)) 10000
write_log $((last - 2)) 10
echo "store: $runs runs, $((runs * 5)) stages; logs of $log_lines, 10000 and 10 lines ($(du -h "$work/data/logs/$last/build@1.log" | cut -f1) for the largest)"

# 2. The daemon again, on that store.
start
rss() { awk -v k="$1:" '$1 == k { print $2 / 1024 " MB" }' "/proc/$pid/status"; }
echo "daemon RSS before load: $(rss VmRSS)"

connections=10
delay_ms=$((connections * 1000 / rate))
bench() { # name path-expression (Lua) ...
  local name=$1 expr=$2
  cat >"$work/$name.lua" <<EOF
math.randomseed(42)
local last = $last
request = function()
  return wrk.format("GET", $expr)
end
delay = function() return $delay_ms end
done = function(summary, latency, requests)
  local seconds = summary.duration / 1e6
  local errors = summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.status + summary.errors.timeout
  io.write(string.format("%-9s p50 %.2f ms  p95 %.2f ms  p99 %.2f ms  max %.2f ms  %.0f req/s  %d requests  %d errors  %d bytes/answer\n",
    "$name", latency:percentile(50) / 1000, latency:percentile(95) / 1000, latency:percentile(99) / 1000,
    latency.max / 1000, summary.requests / seconds, summary.requests, errors, summary.bytes / math.max(summary.requests, 1)))
end
EOF
  wrk -t2 -c"$connections" -d"${seconds}s" --timeout 2s -s "$work/$name.lua" "$url" | tail -1
}
bench run-page '"/runs/" .. math.random(1, last)'
bench api-run '"/api/v1/runs/" .. math.random(1, last)'
bench api-list '"/api/v1/runs?repo=repo" .. math.random(0, 9) .. "&limit=50"'
bench home '"/"'
bench log-huge '"/runs/" .. last .. "/stages/build?attempt=1"'
echo "daemon RSS after load: $(rss VmRSS), peak $(rss VmHWM)"

# 3. Page sizes: the huge log's page is as big as the 10,000-line one's (both 5,000 lines).
for run in "$last" $((last - 1)) $((last - 2)); do
  lines=$(wc -l <"$work/data/logs/$run/build@1.log")
  curl -s -o /dev/null -w "log page of $lines lines: %{size_download} bytes in %{time_total} s\n" \
    "$url/runs/$run/stages/build?attempt=1"
done
