#!/usr/bin/env bash
# Times the whole daemon, not just functions. Prints one line per figure; docs/performance.md
# records them with the machine they came from.
#
#   cargo build --release && benches/daemon.sh [--bin PATH] [--only overhead|poll|memory]
#
# 1. overhead: 200 stages running `true`, against the same 200 commands in one bare `sh -c`
#    (the floor): through `deploylite run` (scheduler, SQLite with synchronous=NORMAL, process
#    spawn, logs), and through the daemon (`deploylite serve`, synchronous=FULL), timed by the
#    daemon's own stage timestamps.
# 2. poll:     CPU time of one poll cycle over 1,000 watched repositories with no new commits.
# 3. memory:   daemon RSS idle, and with 100 stages running at once.
set -euo pipefail

bin=${CARGO_TARGET_DIR:-$HOME/.cache/deploylite-target}/release/deploylite
only=""
while [ $# -gt 0 ]; do
  case "$1" in
    --bin) bin=$2; shift 2 ;;
    --only) only=$2; shift 2 ;;
    *) echo "usage: $0 [--bin PATH] [--only overhead|poll|memory]" >&2; exit 2 ;;
  esac
done
[ -x "$bin" ] || { echo "no binary at $bin: run cargo build --release first" >&2; exit 2; }
# Not under /tmp by default: ext4 makes every file creation scan the inodes deleted in the last
# minute (five while the inode table is dirty) of its block group, and a test suite or an
# earlier run of this script that just deleted thousands of files there adds 1-3 ms to each
# stage's log file. BENCH_TMP chooses another place; on a journal-less ext4, wait a few minutes
# between runs.
work=$(mktemp -d "${BENCH_TMP:-/var/tmp}/deploylite-bench.XXXXXX")
# A daemon run as root runs stages as `nobody`, who must pass through to the workspaces.
chmod 711 "$work"
export TMPDIR=$work/tmp
mkdir -p "$TMPDIR"
pids=()
cleanup() { for p in "${pids[@]:-}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

git_repo() { # dir
  git -C "$1" init -q -b main
  git -C "$1" add -A
  git -C "$1" -c user.name=bench -c user.email=bench@example.invalid commit -qm init
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

wait_healthy() { # port
  for _ in $(seq 1 200); do
    curl -sf "http://127.0.0.1:$1/healthz" >/dev/null && return 0
    sleep 0.05
  done
  echo "daemon did not become healthy" >&2; return 1
}

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }

overhead() {
  local repo=$work/overhead
  mkdir -p "$repo/.deploylite/pipelines"
  {
    echo "name: serial"
    echo "stages:"
    echo "  s0: { steps: [ { run: 'true' } ] }"
    for i in $(seq 1 199); do echo "  s$i: { needs: [s$((i-1))], steps: [ { run: 'true' } ] }"; done
  } > "$repo/.deploylite/pipelines/serial.yaml"
  {
    echo "name: parallel"
    echo "stages:"
    for i in $(seq 0 199); do echo "  s$i: { steps: [ { run: 'true' } ] }"; done
  } > "$repo/.deploylite/pipelines/parallel.yaml"
  git_repo "$repo"
  local floor
  floor=$(printf 'true; %.0s' $(seq 1 200))
  # The daemon first: hyperfine's runs below create and delete thousands of log files, which
  # slows every file creation nearby for the next minutes (see the comment on BENCH_TMP).
  overhead_daemon "$repo"
  hyperfine --warmup 2 --runs 10 --export-json "$work/overhead.json" -N \
    "sh -c '$floor'" \
    "$bin run --repo $repo --pipeline serial" \
    "$bin run --repo $repo --pipeline parallel --max-parallel-stages 8" >/dev/null 2>&1 \
    || hyperfine --warmup 2 --runs 10 --export-json "$work/overhead.json" \
    "sh -c '$floor'" \
    "$bin run --repo $repo --pipeline serial >/dev/null 2>&1" \
    "$bin run --repo $repo --pipeline parallel --max-parallel-stages 8 >/dev/null 2>&1" >/dev/null
  python3 - "$work/overhead.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))["results"]
floor = r[0]["median"]
print(f"overhead: bare sh -c with 200 x true: {floor*1e3:.2f} ms (median)")
for x, name in zip(r[1:], ["serial chain of 200 stages", "200 independent stages, 8 at a time"]):
    per = (x["median"] - floor) / 200
    print(f"overhead: {name}: {x['median']*1e3:.1f} ms total, {per*1e3:.3f} ms per stage over the floor")
PY
}

# The same serial chain and independent stages through `deploylite serve` (durable commits):
# from the first stage's start to the last stage's end, by the daemon's own timestamps.
overhead_daemon() { # repo
  local repo=$1 port pid
  port=$(free_port)
  printf 'repos:\n  - { name: overhead, url: %s, poll_interval: 1h }\n' "$repo" > "$work/overhead.yaml"
  DEPLOYLITE_LOG=warn "$bin" serve --config "$work/overhead.yaml" --listen "127.0.0.1:$port" \
    --data-dir "$work/overhead-data" --max-parallel-stages 8 2>"$work/overhead.log" &
  pid=$!; pids+=("$pid")
  wait_healthy "$port"
  python3 - "$port" <<'PY'
import datetime, json, sys, time, urllib.request
port = sys.argv[1]
def get(path):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}") as r:
        return json.load(r)
deadline = time.time() + 120
while time.time() < deadline:
    runs = get("/api/v1/runs?limit=10")
    if len(runs) == 2 and all(r["status"] in ("success", "failed", "error", "cancelled") for r in runs):
        break
    time.sleep(0.2)
else:
    sys.exit("overhead: the daemon's runs did not finish in 120 s")
def t(x):
    return datetime.datetime.fromisoformat(x.replace("Z", "+00:00")).timestamp()
for r in sorted(runs, key=lambda r: r["pipeline"], reverse=True):
    if r["status"] != "success":
        sys.exit(f"overhead: run {r['id']} ({r['pipeline']}) ended {r['status']}")
    stages = get(f"/api/v1/runs/{r['id']}")["stages"]
    first = min(t(s["started_at"]) for s in stages)
    last = max(t(s["finished_at"]) for s in stages)
    total = (last - first) * 1e3
    name = "serial chain of 200 stages" if r["pipeline"] == "serial" else "200 independent stages, 8 at a time"
    print(f"overhead: daemon (serve, synchronous=FULL), {name}: {total:.1f} ms first start to last end, {total/len(stages):.3f} ms per stage")
PY
  kill "$pid"; wait "$pid" 2>/dev/null || true
}

poll() {
  local n=1000 repos=$work/repos port
  mkdir -p "$repos"
  for i in $(seq 1 $n); do
    mkdir -p "$repos/r$i"
    echo "$i" > "$repos/r$i/README"
  done
  for i in $(seq 1 $n); do git_repo "$repos/r$i"; done
  {
    echo "repos:"
    for i in $(seq 1 $n); do echo "  - { name: r$i, url: $repos/r$i, poll_interval: 1s }"; done
  } > "$work/poll.yaml"
  port=$(free_port)
  DEPLOYLITE_LOG=warn "$bin" serve --config "$work/poll.yaml" --listen "127.0.0.1:$port" --data-dir "$work/poll-data" 2>"$work/poll.log" &
  local pid=$!; pids+=("$pid")
  wait_healthy "$port"
  sleep 5 # the first cycle records 1,000 refs
  local t0 c0 t1 c1 hz
  hz=$(getconf CLK_TCK)
  t0=$(date +%s.%N); c0=$(cpu_ticks "$pid")
  sleep 10
  t1=$(date +%s.%N); c1=$(cpu_ticks "$pid")
  python3 -c "
cycles = ($t1 - $t0) / 1.0
cpu = ($c1 - $c0) / $hz
print(f'poll: {$n} repos, no new commits: {cpu/cycles*1e3:.0f} ms CPU per poll cycle ({cpu:.2f} s CPU over {cycles:.1f} cycles)')
"
  echo "memory: RSS with $n repos watched, idle: $(( $(rss_kb "$pid") / 1024 )) MB"
  kill "$pid"; wait "$pid" 2>/dev/null || true
}

memory() {
  local repo=$work/mem port
  mkdir -p "$repo/.deploylite/pipelines"
  {
    echo "name: hundred"
    echo "stages:"
    for i in $(seq 1 100); do echo "  s$i: { steps: [ { run: 'sleep 4' } ] }"; done
  } > "$repo/.deploylite/pipelines/hundred.yaml"
  printf 'repos:\n  - { name: mem, url: %s, poll_interval: 1h }\n' "$repo" > "$work/mem.yaml"
  port=$(free_port)
  mkdir -p "$work/empty"
  printf 'repos: []\n' > "$work/idle.yaml"
  DEPLOYLITE_LOG=warn "$bin" serve --config "$work/idle.yaml" --listen "127.0.0.1:$port" --data-dir "$work/idle-data" 2>/dev/null &
  local pid=$!; pids+=("$pid")
  wait_healthy "$port"; sleep 2
  echo "memory: RSS idle (no repos): $(( $(rss_kb "$pid") / 1024 )) MB"
  kill "$pid"; wait "$pid" 2>/dev/null || true

  git_repo "$repo"
  port=$(free_port)
  DEPLOYLITE_LOG=warn "$bin" serve --config "$work/mem.yaml" --listen "127.0.0.1:$port" --data-dir "$work/mem-data" --max-parallel-stages 100 2>/dev/null &
  pid=$!; pids+=("$pid")
  wait_healthy "$port"
  local peak=0 running=0
  for _ in $(seq 1 60); do
    local r; r=$(rss_kb "$pid"); [ "$r" -gt "$peak" ] && peak=$r
    running=$(curl -s "http://127.0.0.1:$port/api/v1/runs/1" | python3 -c 'import json,sys
try: print(sum(1 for s in json.load(sys.stdin)["stages"] if s["status"]=="running"))
except Exception: print(0)')
    [ "$running" -ge 100 ] && break
    sleep 0.1
  done
  sleep 1; r=$(rss_kb "$pid"); [ "$r" -gt "$peak" ] && peak=$r
  echo "memory: RSS with $running stages running: $(( peak / 1024 )) MB (peak sampled)"
  kill "$pid"; wait "$pid" 2>/dev/null || true
}

echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -sr); binary: $bin"
case "$only" in
  "") overhead; poll; memory ;;
  overhead|poll|memory) "$only" ;;
  *) echo "unknown --only $only" >&2; exit 2 ;;
esac
