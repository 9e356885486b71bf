#!/usr/bin/env bash
# A local multi-node Ray cluster (Ray's fake multi-node provider, cluster/local.yaml) for
# trying the distributed search on one machine.
#
#   cluster/local_cluster.sh start                 head + 1 worker node; waits for the worker
#   cluster/local_cluster.sh smoke [--out DIR] [ARGS...]
#                                                  the smoke search, run as on a cluster's head:
#                                                  without --address (ARGS go to
#                                                  tune/search_alpha_beta.py); then checks that
#                                                  it attached to this cluster and that its
#                                                  trials ran on more than one node (their
#                                                  results: DIR/ray, or a local --storage)
#   cluster/local_cluster.sh status                address, live processes, `ray status`
#   cluster/local_cluster.sh stop                  stops the processes that `start` started
#
# Everything lives in a state folder (LOCAL_CLUSTER_DIR, default .ray-local/ in the repository):
# Ray's temp dir (ray/), a token for Ray's token authentication (auth_token), the address, the
# ids of the processes started (pids: "PID START_TIME" lines) and the smoke outputs.
# The state folder stands in for the machine's /tmp: Ray's temp dir is STATE/ray, the one Ray
# uses by default when RAY_TMPDIR=STATE, so `ray start` records the cluster's address in
# STATE/ray/ray_current_cluster, where a search (or `ray status`) run with RAY_TMPDIR=STATE
# finds it, as a search on a real cluster's head finds /tmp/ray/ray_current_cluster. The
# machine's own /tmp/ray is never touched.
# The processes of this cluster are the ones whose command line holds ray/ and their
# descendants; `stop` signals only those (after checking each one's start time), never
# `ray stop`, which would stop every Ray instance on the machine.
#
# Environment: LOCAL_CLUSTER_DIR (state folder), LOCAL_CLUSTER_PORT (GCS port; default a free
# one), LOCAL_CLUSTER_BIN (folder of python and ray; default .venv/bin),
# LOCAL_CLUSTER_TIMEOUT (seconds to wait for the worker node; default 120).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="${LOCAL_CLUSTER_BIN:-$ROOT/.venv/bin}"
STATE="${LOCAL_CLUSTER_DIR:-$ROOT/.ray-local}"
CONFIG="$ROOT/cluster/local.yaml"
HEAD_OBJECT_STORE=400000000

die() {
    echo "local_cluster.sh: error: $*" >&2
    exit 1
}

setup_paths() {
    mkdir -p "$STATE"
    STATE="$(cd "$STATE" && pwd)"
    # Ray's default temp dir under RAY_TMPDIR=STATE (ray._common.utils.get_default_ray_temp_dir)
    TMP_DIR="$STATE/ray"
    PID_FILE="$STATE/pids"
    ADDRESS_FILE="$STATE/address"
    TOKEN_FILE="$STATE/auth_token"
    if [ ! -x "$BIN/python" ] || [ ! -x "$BIN/ray" ]; then
        die "no python/ray in $BIN; run make setup first"
    fi
}

# Token authentication for every Ray process and CLI call of this script (Ray 2.60 reads
# RAY_AUTH_TOKEN before RAY_AUTH_TOKEN_PATH, so an inherited RAY_AUTH_TOKEN is dropped), and
# the state folder as the machine's temp dir for Ray: a driver with no address finds this
# cluster in STATE/ray/ray_current_cluster (RAY_ADDRESS would take precedence: dropped too).
ray_env() {
    export RAY_AUTH_MODE=token
    export RAY_AUTH_TOKEN_PATH="$TOKEN_FILE"
    export RAY_TMPDIR="$STATE"
    unset RAY_AUTH_TOKEN RAY_ADDRESS
}

# "START_TIME" of a process (field 22 of /proc/PID/stat), empty when it is gone or a zombie.
start_time() {
    local stat
    stat="$(cat "/proc/$1/stat" 2>/dev/null)" || return 0
    # Field 2 (the name) may hold spaces: cut everything up to its closing parenthesis.
    echo "${stat##*) }" | awk '$1 != "Z" {print $20}'
}

# Whether PID is still the process recorded under that PID.
is_recorded_alive() {
    local started
    started="$(start_time "$1")"
    [ -n "$started" ] && grep -q "^$1 $started\$" "$PID_FILE"
}

# PIDs of this cluster: a Ray process (its program under .../ray/, or renamed ray::...) whose
# command line holds TMP_DIR, or a descendant of one. Other programs that merely name a file
# there (a `tail -f` of a log) are not Ray's and are left alone: the words that name TMP_DIR
# are not looked at for .../ray/ (TMP_DIR itself ends in /ray).
scan() {
    ps -eww -o pid=,ppid=,args= | CLUSTER_TMP="$TMP_DIR/" awk '
        {
            parent[$1] = $2
            if (index($0, ENVIRON["CLUSTER_TMP"]) == 0)
                next
            for (i = 3; i <= NF; i++)
                if (index($i, ENVIRON["CLUSTER_TMP"]) == 0 && ($i ~ /\/ray\// || $i ~ /ray::/))
                    own[$1] = 1
        }
        END {
            do {
                grown = 0
                for (p in parent) if (!(p in own) && (parent[p] in own)) { own[p] = 1; grown = 1 }
            } while (grown)
            for (p in own) print p
        }'
}

# Add the cluster's current processes to PID_FILE.
record() {
    local pid started
    touch "$PID_FILE"
    for pid in $(scan); do
        [ "$pid" = "$$" ] && continue
        started="$(start_time "$pid")"
        [ -n "$started" ] || continue
        grep -q "^$pid $started\$" "$PID_FILE" || echo "$pid $started" >>"$PID_FILE"
    done
}

# Recorded processes that are still the same processes (same PID and start time).
alive_recorded() {
    local pid started
    [ -f "$PID_FILE" ] || return 0
    while read -r pid started; do
        [ -n "$pid" ] && [ "$(start_time "$pid")" = "$started" ] && echo "$pid"
    done <"$PID_FILE"
    return 0
}

recorded_count() {
    if [ -f "$PID_FILE" ]; then wc -l <"$PID_FILE"; else echo 0; fi
}

args_of() {
    tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null || true
}

# SIGTERM the given PIDs, wait up to $GRACE seconds, SIGKILL what is left.
terminate() {
    local pid waited=0 left
    [ "$#" -gt 0 ] || return 0
    kill -TERM "$@" 2>/dev/null || true
    while [ "$waited" -lt "$((GRACE * 10))" ]; do
        left=""
        for pid in "$@"; do is_recorded_alive "$pid" && left="$left $pid"; done
        [ -z "$left" ] && return 0
        sleep 0.1
        waited=$((waited + 1))
    done
    echo "local_cluster.sh: SIGKILL to$left (still alive ${GRACE}s after SIGTERM)" >&2
    # shellcheck disable=SC2086
    kill -KILL $left 2>/dev/null || true
    sleep 1
}

cmd_stop() {
    local pid args monitor="" raylets="" gcs="" others="" left=""
    GRACE="${GRACE:-10}"
    if [ -d "$TMP_DIR" ]; then record; fi
    for pid in $(alive_recorded); do
        args="$(args_of "$pid")"
        case "$args" in
            *autoscaler/_private/monitor.py*) monitor="$monitor $pid" ;;
            *raylet/raylet*) raylets="$raylets $pid" ;;
            *gcs/gcs_server*) gcs="$gcs $pid" ;;
            *) others="$others $pid" ;;
        esac
    done
    # The autoscaler first (else it replaces the worker nodes stopped next), then the raylets,
    # then the rest, and the GCS last (the order `ray stop` uses).
    # shellcheck disable=SC2086
    { terminate $monitor; terminate $raylets; terminate $others; terminate $gcs; }
    if [ -d "$TMP_DIR" ]; then record; fi
    left="$(alive_recorded | tr '\n' ' ')"
    if [ -n "$left" ]; then
        # shellcheck disable=SC2086
        kill -KILL $left 2>/dev/null || true
        sleep 1
        left="$(alive_recorded | tr '\n' ' ')"
    fi
    # A search with no address must not find a cluster that is gone.
    rm -f "$ADDRESS_FILE" "$TMP_DIR/ray_current_cluster"
    [ -z "$left" ] || die "processes still alive after SIGKILL: $left"
    echo "local cluster stopped ($(recorded_count) processes recorded)"
}

free_port() {
    # Outside Ray's worker port range (10002-19999).
    "$BIN/python" - "$1" <<'EOF'
import socket
import sys

for _ in range(50):
    with socket.socket() as s:
        s.bind((sys.argv[1], 0))
        port = s.getsockname()[1]
    if not 10002 <= port <= 19999:
        print(port)
        break
else:
    sys.exit("no free port outside 10002-19999")
EOF
}

cmd_start() {
    local ip port head_cpus
    [ -z "$(alive_recorded)" ] || die "a local cluster is already running ($STATE); run stop first"
    printf '*\n' >"$STATE/.gitignore"
    rm -rf "$TMP_DIR" "$PID_FILE" "$ADDRESS_FILE"
    if [ ! -s "$TOKEN_FILE" ]; then
        (umask 077 && "$BIN/python" -c 'import secrets; print(secrets.token_hex(32))' >"$TOKEN_FILE")
    fi
    ray_env
    # This machine's own address, as Ray picks it (Ray binds to it, not to loopback).
    ip="$("$BIN/python" -c 'import ray._private.services as s; print(s.get_node_ip_address())')"
    port="${LOCAL_CLUSTER_PORT:-$(free_port "$ip")}"
    head_cpus="$("$BIN/python" - "$CONFIG" "$STATE/local.yaml" "$ip:$port" <<'EOF'
import sys

import yaml

source, target, address = sys.argv[1:]
with open(source) as f:
    config = yaml.safe_load(f)
config["provider"]["gcs_address"] = address
with open(target, "w") as f:
    yaml.safe_dump(config, f, sort_keys=False)
print(int(config["available_node_types"][config["head_node_type"]]["resources"]["CPU"]))
EOF
)"
    echo "starting a local Ray cluster at $ip:$port (state: $STATE)"
    if ! RAY_FAKE_CLUSTER=1 "$BIN/ray" start --head --node-ip-address="$ip" --port="$port" \
        --num-cpus="$head_cpus" --num-gpus=0 --object-store-memory="$HEAD_OBJECT_STORE" \
        --autoscaling-config="$STATE/local.yaml" --temp-dir="$TMP_DIR" \
        --include-dashboard=false --disable-usage-stats >"$STATE/start.log" 2>&1; then
        cmd_stop >/dev/null 2>&1 || true
        die "ray start failed; see $STATE/start.log"
    fi
    record
    echo "$ip:$port" >"$ADDRESS_FILE"
    # Where a driver with no address looks (`ray start` wrote it; see ray_env).
    if [ "$(cat "$TMP_DIR/ray_current_cluster" 2>/dev/null)" != "$ip:$port" ]; then
        cmd_stop >/dev/null 2>&1 || true
        die "ray start did not record $ip:$port in $TMP_DIR/ray_current_cluster"
    fi
    if ! "$BIN/python" - "$ip:$port" "${LOCAL_CLUSTER_TIMEOUT:-120}" >>"$STATE/start.log" 2>&1 <<'EOF'
import sys
import time

import ray

address, timeout = sys.argv[1], float(sys.argv[2])
ray.init(address=address, log_to_driver=False, logging_level="ERROR")
deadline = time.monotonic() + timeout
while True:
    alive = [n for n in ray.nodes() if n["Alive"]]
    if len(alive) >= 2:
        print(f"{len(alive)} nodes alive")
        break
    if time.monotonic() > deadline:
        sys.exit(f"only {len(alive)} node(s) alive after {timeout:g} s")
    time.sleep(1)
EOF
    then
        record
        cmd_stop >/dev/null 2>&1 || true
        die "the worker node did not join; see $STATE/start.log and $TMP_DIR/session_latest/logs/monitor.log"
    fi
    record
    echo "local cluster up: address $ip:$port, $(recorded_count) processes recorded in $PID_FILE"
}

require_running() {
    if [ -z "$(alive_recorded)" ] || [ ! -s "$ADDRESS_FILE" ]; then
        die "no local cluster is running ($STATE); run start first"
    fi
}

cmd_smoke() {
    local out address
    out="$STATE/smoke-$(date +%Y%m%d-%H%M%S)"
    if [ "${1:-}" = "--out" ]; then
        [ "$#" -ge 2 ] || die "--out needs a folder"
        out="$2"
        shift 2
    fi
    require_running
    address="$(cat "$ADDRESS_FILE")"
    ray_env
    # As the README tells a cluster's user: on the head, no --address. The search finds this
    # cluster where `ray start` recorded it ($RAY_TMPDIR/ray/ray_current_cluster).
    echo "smoke search on the cluster of this node ($address, recorded in" \
        "$TMP_DIR/ray_current_cluster) -> $out"
    (cd "$ROOT" && "$BIN/python" tune/search_alpha_beta.py --preset smoke --out "$out" "$@")
    record
    "$BIN/python" - "$out" "$address" "$@" <<'EOF'
import argparse
import json
import sys
from collections import Counter
from pathlib import Path

import ray

out, address, *search_args = sys.argv[1:]
# Tune's results: OUT/ray, or the search's own folder under a local --storage
storage = argparse.ArgumentParser(add_help=False)
storage.add_argument("--storage")
given = storage.parse_known_args(search_args)[0].storage
root = Path(out, "ray")
if given:
    state = json.loads(Path(out, "search_state.json").read_text())
    root = Path(given.removeprefix("file://"), state.get("storage_id") or "")
nodes = Counter()
for path in sorted(root.glob("*/*/result.json")):
    lines = path.read_text().strip().splitlines()
    if lines:
        nodes[json.loads(lines[-1])["node_id"]] += 1
if not nodes:
    sys.exit(f"local_cluster.sh: error: no trial results under {root}/*/*/result.json")
# Every node this cluster ever had (ray.nodes() keeps the dead ones): a search that started a
# Ray of its own ran its trials on nodes of that one instead.
ray.init(address=address, log_to_driver=False, logging_level="ERROR")
ours = {node["NodeID"] for node in ray.nodes()}
ray.shutdown()
for node, count in nodes.most_common():
    print(f"  node {node}: {count} trial(s)")
strangers = sorted(set(nodes) - ours)
if strangers:
    sys.exit(
        f"local_cluster.sh: error: the search did not attach to the cluster at {address}: "
        f"{len(strangers)} of its trial nodes are not this cluster's ({', '.join(strangers)}); "
        "a search without --address should find it in $RAY_TMPDIR/ray/ray_current_cluster"
    )
print(f"the search attached to the cluster at {address}")
if len(nodes) < 2:
    sys.exit(f"local_cluster.sh: error: all {sum(nodes.values())} trials ran on one node")
print(f"trials ran on {len(nodes)} nodes")
EOF
}

cmd_status() {
    local alive
    alive="$(alive_recorded | wc -l)"
    if [ "$alive" -eq 0 ]; then
        echo "no local cluster running ($STATE)"
        return 3
    fi
    echo "local cluster at $(cat "$ADDRESS_FILE" 2>/dev/null || echo '?'): $alive recorded processes alive"
    ray_env
    "$BIN/ray" status --address "$(cat "$ADDRESS_FILE")" || true
}

usage() {
    echo "usage: cluster/local_cluster.sh start | smoke [--out DIR] [ARGS...] | status | stop" >&2
    exit 2
}

[ "$#" -ge 1 ] || usage
command="$1"
shift
case "$command" in
    start | smoke | status | stop) setup_paths ;;
    *) usage ;;
esac
case "$command" in
    start) cmd_start ;;
    smoke) cmd_smoke "$@" ;;
    status) cmd_status ;;
    stop) cmd_stop ;;
esac
