#!/usr/bin/env bash
# Remote runners against the real daemon on loopback: the targets of issue 4. Prints one line per
# figure; docs/performance.md records them with the machine they came from.
#
#   cargo build --release --bin deploylite && benches/runners.sh [--bin PATH] [--only load|lease]
#       [--runners 10] [--capacity 4] [--pipelines 10] [--stages 200] [--samples 100] [--chain 50]
#       [--perf DIR]
#
# 1. load:  `deploylite serve` with its own runner off, and R `deploylite runner` processes (local
#    executor, capacity C each, their own work and state dirs). Once they are online, one commit
#    adds P pipelines of S independent `true` stages (P x S stages, default 2,000). Measured from
#    just before that commit until the API shows all P runs final: wall time, the server's CPU
#    (utime+stime from /proc/PID/stat; its reaped children, i.e. `git archive` per lease and the
#    run checkouts, separately), the runners' CPU (their own, and their children: sh, tar), and
#    stages/s. Every stage must have succeeded (counted through the API), else exit 1.
#    --perf DIR records the server with `perf record` during that window (perturbs the figures).
# 2. lease: the runner protocol's latency, three ways, each against a fresh daemon:
#    a. round trips of a minimal runner written here in Python (one keep-alive HTTP connection,
#       no executor) on one run of 2 x N independent stages, all assigned to it up front (its
#       capacity is 2 x N): `poll` with nothing to take (free = 0); `poll` that returns a lease
#       already assigned, and the `complete` that acknowledges it (N each); `GET source.tar`
#       (N); and the server's CPU per request of each kind. A lease's cost grows with the size
#       of its run: with the default N = 100 the run has 200 stages, like the load's pipelines.
#    b. the same minimal runner (capacity 1) on a serial chain of N stages: from sending the
#       `complete` of stage i to holding the lease of stage i+1 ("a stage ends -> the next one is
#       in the runner's hands"); split into complete -> ack (the ack waits for the scheduler tick
#       that records the end and dispatches stage i+1 in one transaction) and ack -> poll answered.
#    c. a real `deploylite runner` (capacity 1) on a serial chain of --chain stages: the daemon's
#       timestamps (started_at = dispatch, finished_at = end recorded) and the first lines of each
#       stage's log (the runner writes the first once it holds the lease, `step 1` once the
#       workspace is ready).
#    Timestamps from the API and the logs have millisecond resolution; the Python client's own
#    time (about 0.1 ms per request) is included in the round trips.
set -euo pipefail

bin=${CARGO_TARGET_DIR:-$HOME/.cache/deploylite-target}/release/deploylite
only=""
runners=10
capacity=4
pipelines=10
stages=200
samples=100
chain=50
perf_dir=""
while [ $# -gt 0 ]; do
  case "$1" in
    --bin) bin=$2; shift 2 ;;
    --only) only=$2; shift 2 ;;
    --runners) runners=$2; shift 2 ;;
    --capacity) capacity=$2; shift 2 ;;
    --pipelines) pipelines=$2; shift 2 ;;
    --stages) stages=$2; shift 2 ;;
    --samples) samples=$2; shift 2 ;;
    --chain) chain=$2; shift 2 ;;
    --perf) perf_dir=$2; shift 2 ;;
    *) echo "usage: $0 [--bin PATH] [--only load|lease] [--runners N] [--capacity N] [--pipelines N] [--stages N] [--samples N] [--chain N] [--perf DIR]" >&2; exit 2 ;;
  esac
done
[ -x "$bin" ] || { echo "no binary at $bin: run cargo build --release --bin deploylite first" >&2; exit 2; }
bin=$(realpath "$bin")
work=$(mktemp -d)
pids=()
TOKEN=bench-registration-token-0123456789

# Only processes this script started and that still run what it started (a pid is not reused
# within a run of this script, but check anyway).
ours() { [ -n "$1" ] && grep -qaF -e "$bin" -e perf "/proc/$1/cmdline" 2>/dev/null; }
cleanup() {
  set +e
  local p alive
  for p in "${pids[@]:-}"; do ours "$p" && kill -TERM "$p" 2>/dev/null; done
  for _ in $(seq 1 50); do
    alive=0
    for p in "${pids[@]:-}"; do ours "$p" && alive=1; done
    [ $alive = 0 ] && break
    sleep 0.1
  done
  for p in "${pids[@]:-}"; do ours "$p" && kill -KILL "$p" 2>/dev/null; done
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

git_commit() { # dir message
  git -C "$1" add -A
  git -C "$1" -c user.name=bench -c user.email=bench@example.invalid commit -qm "$2"
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

wait_healthy() { # port pid
  for _ in $(seq 1 200); do
    curl -sf "http://127.0.0.1:$1/healthz" >/dev/null && return 0
    kill -0 "$2" 2>/dev/null || break
    sleep 0.05
  done
  echo "daemon did not become healthy" >&2; return 1
}

# start_daemon NAME REPO: sets $port and $server_pid; config in $work/NAME.yaml, log in $work/NAME.log.
start_daemon() {
  local name=$1 repo=$2
  cat > "$work/$name.yaml" <<EOF
local_runner: { enabled: false }
runners: { registration_tokens: ["$TOKEN"], lease_ttl: 60s }
repos:
  - { name: $name, url: $repo, poll_interval: 100ms }
EOF
  port=$(free_port)
  DEPLOYLITE_LOG=${DEPLOYLITE_LOG:-info} "$bin" serve --config "$work/$name.yaml" --listen "127.0.0.1:$port" \
    --data-dir "$work/$name-data" 2>"$work/$name.log" &
  server_pid=$!; pids+=("$server_pid")
  wait_healthy "$port" "$server_pid"
}

# start_runner PORT NAME LABELS CAPACITY: appends the pid to $runner_pids.
runner_pids=()
start_runner() {
  local dir=$work/runner-$2
  mkdir -p "$dir"
  DEPLOYLITE_RUNNER_TOKEN=$TOKEN DEPLOYLITE_LOG=${DEPLOYLITE_LOG:-info} "$bin" runner \
    --server "http://127.0.0.1:$1" --name "$2" --labels "$3" --capacity "$4" --grace 1s \
    --state-dir "$dir/state" --work-dir "$dir/work" >/dev/null 2>"$dir/stderr" &
  runner_pids+=($!); pids+=($!)
}

wait_runners_online() { # port count
  python3 - "$1" "$2" <<'PY'
import json, sys, time, urllib.request
port, want = sys.argv[1], int(sys.argv[2])
deadline = time.time() + 30
while time.time() < deadline:
    runners = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/runners"))
    if sum(r["status"] == "online" for r in runners) >= want:
        sys.exit(0)
    time.sleep(0.1)
sys.exit(f"only {sum(r['status'] == 'online' for r in runners)} of {want} runners came online")
PY
}

# Counts log lines at WARN or ERROR (ANSI colour codes stripped).
warnings() { sed 's/\x1b\[[0-9;]*m//g' "$@" 2>/dev/null | grep -cE ' (WARN|ERROR) ' || true; }

load() {
  local repo=$work/load-repo total=$((pipelines * stages))
  mkdir -p "$repo"
  echo "load" > "$repo/README"
  git -C "$repo" init -q -b main
  git_commit "$repo" init # no pipelines yet: nothing runs until the runners are up
  start_daemon load "$repo"
  runner_pids=()
  for i in $(seq 1 "$runners"); do start_runner "$port" "r$i" linux "$capacity"; done
  wait_runners_online "$port" "$runners"
  sleep 1 # every runner is in its long poll
  mkdir -p "$repo/.deploylite/pipelines"
  for p in $(seq 1 "$pipelines"); do
    {
      echo "name: p$p"
      echo "stages:"
      for s in $(seq 1 "$stages"); do echo "  s$s: { steps: [ { run: 'true' } ] }"; done
    } > "$repo/.deploylite/pipelines/p$p.yaml"
  done
  git -C "$repo" add -A # staged now, committed inside the measured window
  local perf_pid=""
  if [ -n "$perf_dir" ]; then
    mkdir -p "$perf_dir"
    perf record -F 199 -g --call-graph dwarf,8192 -p "$server_pid" -o "$perf_dir/perf.data" \
      >/dev/null 2>"$perf_dir/perf-record.log" &
    perf_pid=$!; pids+=("$perf_pid")
    sleep 0.5
  fi
  python3 - "$port" "$server_pid" "$repo" "$pipelines" "$total" "$runners" "$capacity" "${runner_pids[@]}" <<'PY'
import json, os, subprocess, sys, time, urllib.request
from datetime import datetime

port, server, repo = sys.argv[1], int(sys.argv[2]), sys.argv[3]
npipe, total, nrun, cap = map(int, sys.argv[4:8])
runner_pids = [int(p) for p in sys.argv[8:]]
hz = os.sysconf("SC_CLK_TCK")
base = f"http://127.0.0.1:{port}"

def cpu(pid):  # (own, reaped children) in seconds
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / hz, (int(f[13]) + int(f[14])) / hz

def get(path):
    return json.load(urllib.request.urlopen(base + path, timeout=30))

def threads(pid):  # {tid: (name, state, cpu seconds)} of the threads alive now
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            text = open(f"/proc/{pid}/task/{tid}/stat").read()
        except OSError:
            continue
        name = text[text.index("(") + 1:text.rindex(")")]
        f = text.rsplit(")", 1)[1].split()
        out[tid] = (name, f[0], (int(f[11]) + int(f[12])) / hz)
    return out

FINAL = {"success", "failed", "cancelled", "skipped", "error"}
s0, r0, th0 = cpu(server), [cpu(p) for p in runner_pids], threads(server)
# The SQLite worker thread (sqlx runs each connection on its own thread; the store has one
# connection): sampled every 50 ms, running (R) or waiting for the disk (D) counts as busy.
sqlite_tids = [t for t, v in th0.items() if v[0].startswith("sqlx-sqlite")]
busy = samples = 0
t0 = time.time()
subprocess.run(["git", "-C", repo, "-c", "user.name=bench", "-c", "user.email=bench@example.invalid",
                "commit", "-qm", "pipelines"], check=True)
deadline = t0 + 900
while True:
    runs = get("/api/v1/runs?limit=1000")
    if len(runs) >= npipe and all(r["status"] in FINAL for r in runs):
        break
    if time.time() > deadline:
        sys.exit(f"load: timed out after 900 s: {[(r['id'], r['status']) for r in runs]}")
    for _ in range(5):
        time.sleep(0.01)
        for tid in sqlite_tids:
            try:
                state = open(f"/proc/{server}/task/{tid}/stat").read().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            samples += 1
            busy += state in "RD"
t1 = time.time()
s1, r1, th1 = cpu(server), [cpu(p) for p in runner_pids], threads(server)

wall = t1 - t0
ts = lambda s: datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()
ok, bad, first, last, held = 0, [], None, None, []
for r in runs:
    detail = get(f"/api/v1/runs/{r['id']}")
    if detail["status"] != "success":
        bad.append(f"run #{r['id']} {r['pipeline']}: {detail['status']} {detail.get('errors') or ''}")
    for s in detail["stages"]:
        if s["status"] == "success":
            ok += 1
        else:
            bad.append(f"run #{r['id']} stage {s['name']}: {s['status']} ({s.get('pending_reason')})")
        if s.get("started_at"):
            first = min(first or 1e18, ts(s["started_at"]))
        if s.get("finished_at"):
            last = max(last or 0, ts(s["finished_at"]))
        if s.get("started_at") and s.get("finished_at"):
            held.append((ts(s["finished_at"]) - ts(s["started_at"])) * 1e3)
if len(runs) != npipe or ok != total:
    print(f"load: FAILED: {len(runs)} runs (want {npipe}), {ok} stages succeeded (want {total})", file=sys.stderr)
    for line in bad[:20]:
        print("  " + line, file=sys.stderr)
    sys.exit(1)

own, kids = s1[0] - s0[0], s1[1] - s0[1]
rown = sum(b[0] - a[0] for a, b in zip(r0, r1))
rkids = sum(b[1] - a[1] for a, b in zip(r0, r1))
print(f"load: {nrun} runners x capacity {cap}, {npipe} runs x {total // npipe} stages of `true`: all {ok} stages succeeded")
print(f"load: wall from the commit to every run final: {wall:.2f} s ({total / wall:.0f} stages/s); "
      f"first dispatch -> last end (daemon timestamps): {last - first:.2f} s")
held.sort()
print(f"load: per stage, dispatch -> end recorded (daemon timestamps): p50 {held[len(held) // 2]:.0f} ms, "
      f"p90 {held[int(len(held) * 0.9)]:.0f} ms; {nrun * cap} slots busy {sum(held) / 1e3 / (nrun * cap) / (last - first) * 100:.0f}% of the time")
print(f"load: server CPU {own:.2f} s over {wall:.2f} s = {own / wall:.2f} cores "
      f"(+ {kids:.2f} s in its children, git archive and checkouts: {(own + kids) / wall:.2f} cores in all); "
      f"{own / total * 1e3:.2f} ms server CPU per stage, so one core of server sustains {total / own:.0f} stages/s")
by_name = {}
for tid, (name, _, c) in th1.items():
    by_name[name] = by_name.get(name, 0) + c - th0.get(tid, (name, "", 0))[2]
named = sum(by_name.values())
parts = ", ".join(f"{name} {c:.2f} s" for name, c in sorted(by_name.items(), key=lambda x: -x[1]) if c >= 0.01)
print(f"load: server CPU by thread: {parts} (tokio names its workers and its blocking pool alike), threads gone since {max(0, own - named):.2f} s; "
      f"the SQLite connection's thread was busy (R or D) in {100 * busy / max(1, samples):.0f}% of {samples} samples")
print(f"load: runners' CPU {rown:.2f} s (+ {rkids:.2f} s in their children, sh and tar) = {(rown + rkids) / wall:.2f} cores; "
      f"{rown / total * 1e3:.2f} ms agent CPU per stage")
PY
  if [ -n "$perf_pid" ]; then
    kill -INT "$perf_pid" 2>/dev/null || true; wait "$perf_pid" 2>/dev/null || true
    local trim='s/[[:space:]]+$//; s/^[[:space:]]+//'
    perf report -i "$perf_dir/perf.data" --no-children --sort dso,symbol --stdio -g none 2>/dev/null \
      | grep -v '^#' | grep -v '^$' | cut -c1-170 | sed -E "$trim" > "$perf_dir/flat.txt" || true
    # Inclusive time of the project's own functions, the runner protocol's handlers, SQLite and
    # JSON; generic arguments and inlined frames left out.
    perf report -i "$perf_dir/perf.data" --children --sort symbol --stdio -g none --percent-limit 0.3 2>/dev/null \
      | python3 -c '
import re, sys
seen = set()
for line in sys.stdin:
    m = re.match(r"\s*([0-9.]+)%\s+[0-9.]+%\s+\[.\]\s+(.*\S)", line.rstrip())
    if not m:
        continue
    pct, sym = m.groups()
    sym = re.sub(r"(\s+-)+$", "", sym)  # columns perf cannot fill
    handler = re.search(r"^\{async_block#0\}<fn\(axum::extract::state::State<deploylite_server::\w+::\w+>.*?-> (?:\w+::)*(\w+)::\{async_fn_env", sym)
    if handler:
        name = "HTTP handler " + handler.group(1)
    elif sym.endswith("(inlined)") or not re.match(r"(deploylite_|<deploylite_|sqlite3_step$|serde_json::de::from_trait$)", sym):
        continue
    else:
        name = re.sub(r"<[^<>]*>", "", re.sub(r"<[^<>]*>", "", re.sub(r"<[^<>]*>", "", sym)))
    if name not in seen:
        seen.add(name)
        print(f"{float(pct):6.2f}%  {name[:150]}")
' > "$perf_dir/inclusive.txt" || true
    echo "load: perf of the server, by symbol (self time, top 12; $perf_dir/flat.txt):"
    head -12 "$perf_dir/flat.txt" | sed 's/^/  /'
    echo "load: perf, the project's functions (inclusive time, top 20; $perf_dir/inclusive.txt):"
    head -20 "$perf_dir/inclusive.txt" | sed 's/^/  /'
  fi
  echo "load: WARN/ERROR lines: server $(warnings "$work/load.log"), runners $(warnings "$work"/runner-r[0-9]*/stderr)"
  for p in "${runner_pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${runner_pids[@]}"; do wait "$p" 2>/dev/null || true; done
  kill -TERM "$server_pid"; wait "$server_pid" 2>/dev/null || true
}

# A repository with one pipeline NAME of N `true` stages for runners labelled LABEL, serial or not.
lease_repo() { # dir name n label serial|independent
  local dir=$1
  mkdir -p "$dir/.deploylite/pipelines"
  {
    echo "name: $2"
    echo "stages:"
    echo "  s1: { runs_on: [$4], steps: [ { run: 'true' } ] }"
    for s in $(seq 2 "$3"); do
      if [ "$5" = serial ]; then
        echo "  s$s: { runs_on: [$4], needs: [s$((s-1))], steps: [ { run: 'true' } ] }"
      else
        echo "  s$s: { runs_on: [$4], steps: [ { run: 'true' } ] }"
      fi
    done
  } > "$dir/.deploylite/pipelines/$2.yaml"
  git -C "$dir" init -q -b main
  git_commit "$dir" init
}

lease() {
  # a + b: a minimal runner in Python speaking the protocol of server/src/runners.rs.
  lease_repo "$work/burst-repo" burst "$((2 * samples))" burst independent
  start_daemon burst "$work/burst-repo"
  local burst_port=$port burst_pid=$server_pid
  lease_repo "$work/chain-repo" chain "$samples" chain serial
  start_daemon chain "$work/chain-repo"
  local chain_port=$port chain_pid=$server_pid
  python3 - "$burst_port" "$chain_port" "$samples" "$TOKEN" "$burst_pid" <<'PY'
import http.client, json, os, sys, time, urllib.request
from datetime import datetime

burst_port, chain_port, n, token = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
burst_pid = int(sys.argv[5])

def cpu(pid):  # (own, reaped children) CPU seconds
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    hz = os.sysconf("SC_CLK_TCK")
    return (int(f[11]) + int(f[12])) / hz, (int(f[13]) + int(f[14])) / hz

def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]

def summary(xs):
    return f"p50 {pct(xs, 50):.2f} ms, p90 {pct(xs, 90):.2f} ms, max {max(xs):.2f} ms (n={len(xs)})"

class Runner:
    def __init__(self, port, name, labels, capacity):
        self.port, self.labels, self.capacity = port, labels, capacity
        self.c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        status, body = self.call("POST", "/api/v1/runners/register", {"token": token, "name": name,
                                 "labels": labels, "capacity": capacity, "executor": "bench"}, auth=False)
        assert status == 201, (status, body)
        self.credential = json.loads(body)["credential"]

    def call(self, method, path, body=None, auth=True):
        headers = {"Content-Type": "application/json"}
        if auth:
            headers["Authorization"] = "Bearer " + self.credential
        self.c.request(method, path, body=None if body is None else json.dumps(body), headers=headers)
        r = self.c.getresponse()
        return r.status, r.read()

    def poll(self, free):
        status, body = self.call("POST", "/api/v1/runner/poll",
                                 {"labels": self.labels, "capacity": self.capacity, "free": free})
        assert status == 200, (status, body)
        return json.loads(body)["leases"]

    def lease_path(self, lease, what):
        return f"/api/v1/runner/leases/{lease['run_id']}/{lease['stage']['name']}/{lease['attempt']}/{what}"

    def complete(self, lease):
        status, body = self.call("POST", self.lease_path(lease, "complete"), {"outcome": "success"})
        assert status == 204, (status, body)

def api(port, path):
    return json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30))

def check(port, name):
    (run,) = api(port, "/api/v1/runs")
    for _ in range(100):
        run = api(port, f"/api/v1/runs/{run['id']}")
        if run["status"] == "success":
            return run
        time.sleep(0.05)
    sys.exit(f"lease: run {name} ended {run['status']}: "
             f"{[(s['name'], s['status']) for s in run['stages'] if s['status'] != 'success'][:5]}")

ms = lambda a, b: (b - a) * 1e3

# a. round trips.
r = Runner(burst_port, "proto-burst", ["burst"], 2 * n)
idle = []
c0 = cpu(burst_pid)
for _ in range(n):
    t = time.perf_counter(); leases = r.poll(0); idle.append(ms(t, time.perf_counter()))
    assert leases == []
c1 = cpu(burst_pid)
first = r.poll(1)  # waits for the run to start and its n stages to be assigned to this runner
assert len(first) == 1
r.complete(first[0])
polls, completes, tars = [], [], []
c2 = cpu(burst_pid)
for _ in range(n - 1):
    t = time.perf_counter(); leases = r.poll(1); t1 = time.perf_counter()
    assert len(leases) == 1, leases
    r.complete(leases[0]); t2 = time.perf_counter()
    polls.append(ms(t, t1)); completes.append(ms(t1, t2))
c3 = cpu(burst_pid)
# source.tar, as every runner that needs the files fetches it (a `git archive` per request).
leases = r.poll(1)
while leases and len(tars) < n:
    (lease,) = leases
    t = time.perf_counter(); status, body = r.call("GET", r.lease_path(lease, "source.tar"))
    tars.append(ms(t, time.perf_counter()))
    assert status == 200 and len(body) > 0, status
    r.complete(lease)
    leases = r.poll(1) if len(tars) < n else []
c4 = cpu(burst_pid)
check(burst_port, "burst")
print(f"lease: poll with nothing to take (auth + last_seen write): {summary(idle)}")
print(f"lease: poll -> a lease already assigned: {summary(polls)}")
print(f"lease: complete -> ack: {summary(completes)}")
print(f"lease: poll -> lease + complete -> ack, one lease's protocol round trips: "
      f"{summary([a + b for a, b in zip(polls, completes)])}")
print(f"lease: GET source.tar (tar of a 1-file commit): {summary(tars)}")
per = lambda a, b, k, count: (b[k] - a[k]) / count * 1e3
print(f"lease: server CPU per request (10 ms clock ticks, averaged): idle poll {per(c0, c1, 0, n):.2f} ms; "
      f"poll -> lease + complete {per(c2, c3, 0, n - 1):.2f} ms; "
      f"poll -> lease + source.tar + complete {per(c3, c4, 0, n):.2f} ms (+ {per(c3, c4, 1, n):.2f} ms in git archive)")

# b. serial chain: the runner reports stage i and polls again; the end and the dispatch of
# stage i+1 are written by one scheduler tick, whose start time is both stage i's finished_at and
# stage i+1's started_at.
r = Runner(chain_port, "proto-chain", ["chain"], 1)
sent, acked, handed = {}, {}, {}
leases = r.poll(1)
while leases:
    (lease,) = leases
    name = lease["stage"]["name"]
    handed[name] = sent[name] = time.time()  # nothing to run: reported at once
    r.complete(lease)
    acked[name] = time.time()
    if len(acked) == n:
        break
    leases = r.poll(1)
run = check(chain_port, "chain")
ts = lambda s: datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()
stages = {s["name"]: s for s in run["stages"]}
total, ack, tick, deliver = [], [], [], []
for i in range(1, n):
    a, b = f"s{i}", f"s{i + 1}"
    total.append(ms(sent[a], handed[b]))
    ack.append(ms(sent[a], acked[a]))
    tick.append(ms(ts(stages[b]["started_at"]), acked[a]))
    deliver.append(ms(acked[a], handed[b]))
print(f"lease: serial chain, complete(i) sent -> lease(i+1) in the runner's hands: {summary(total)}")
print(f"lease:   complete(i) sent -> ack (waits for the tick that records it and dispatches i+1): {summary(ack)}")
print(f"lease:   that tick's start (daemon timestamp) -> ack received: {summary(tick)}")
print(f"lease:   ack -> poll returns lease(i+1): {summary(deliver)}")
PY
  kill -TERM "$burst_pid" "$chain_pid"; wait "$burst_pid" "$chain_pid" 2>/dev/null || true

  # c. a real runner on a serial chain.
  lease_repo "$work/real-repo" real "$chain" real serial
  start_daemon real "$work/real-repo"
  runner_pids=()
  start_runner "$port" real-1 real 1
  python3 - "$port" "$chain" <<'PY'
import json, sys, time, urllib.request
from datetime import datetime

port, n = sys.argv[1], int(sys.argv[2])
api = lambda path: urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30).read()
deadline = time.time() + 300
while True:
    runs = json.loads(api("/api/v1/runs"))
    if runs and runs[0]["status"] not in ("queued", "running"):
        break
    if time.time() > deadline:
        sys.exit("lease: the real runner's chain did not finish in 300 s")
    time.sleep(0.05)
run = json.loads(api(f"/api/v1/runs/{runs[0]['id']}"))
if run["status"] != "success":
    sys.exit(f"lease: the real runner's chain ended {run['status']}")
ts = lambda s: datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()
stages = {s["name"]: s for s in run["stages"]}

def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]

summary = lambda xs: f"p50 {pct(xs, 50):.1f} ms, p90 {pct(xs, 90):.1f} ms, max {max(xs):.1f} ms (n={len(xs)})"
got, prep, rest, total = [], [], [], []
for i in range(2, n + 1):  # s1 waited for the runner to start
    s = stages[f"s{i}"]
    lines = api(f"/api/v1/runs/{run['id']}/stages/s{i}/log").decode().splitlines()
    first = ts(lines[0].split(" ", 1)[0])
    step = next(ts(l.split(" ", 1)[0]) for l in lines if " step 1" in l)
    got.append((first - ts(s["started_at"])) * 1e3)
    prep.append((step - first) * 1e3)
    rest.append((ts(s["finished_at"]) - step) * 1e3)
    total.append((ts(s["finished_at"]) - ts(s["started_at"])) * 1e3)
per = (ts(stages[f"s{n}"]["finished_at"]) - ts(stages["s2"]["started_at"])) / (n - 1) * 1e3
print(f"lease: real runner, serial chain of {n}: dispatch -> runner holds the lease (its first log line): {summary(got)}")
print(f"lease: real runner:   first log line -> `step 1` (workspace: GET source.tar, tar -x): {summary(prep)}")
print(f"lease: real runner:   `step 1` -> end recorded (sh, log upload, complete, tick): {summary(rest)}")
print(f"lease: real runner: dispatch -> end recorded, per stage: {summary(total)}; {per:.1f} ms per stage of the chain in all")
PY
  echo "lease: WARN/ERROR lines: servers $(warnings "$work"/burst.log "$work"/chain.log "$work"/real.log), runner $(warnings "$work"/runner-real-1/stderr)"
  kill -TERM "${runner_pids[0]}"; wait "${runner_pids[0]}" 2>/dev/null || true
  kill -TERM "$server_pid"; wait "$server_pid" 2>/dev/null || true
}

echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -sr), load average $(cut -d' ' -f1-3 /proc/loadavg); binary: $bin"
case "$only" in
  "") load; lease ;;
  load|lease) "$only" ;;
  *) echo "unknown --only $only" >&2; exit 2 ;;
esac
