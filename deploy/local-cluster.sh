#!/usr/bin/env bash
# A whole Tributary cluster on one machine, to try it or test it:
#
#   sudo deploy/local-cluster.sh up       three nats-server (routed, JetStream)
#                                         and three nodes, plus a DNS name
#   sudo ip netns exec tribnet ffmpeg -re -i in.mp4 -c copy -f flv rtmp://tributary.test/live/KEY
#   sudo ip netns exec tribnet ffplay rtmp://tributary.test/live/KEY   (KEY: `up` prints it)
#   sudo deploy/local-cluster.sh status   each node's /api/node, the cluster's streams
#   sudo deploy/local-cluster.sh down     stops what `up` started, removes the namespace
#
# Everything runs inside a network namespace of its own (default `tribnet`),
# on loopback addresses 127.0.0.11, .12 and .13 of that namespace: node N
# has RTMP on 127.0.0.1N:1935, HTTP admin on 127.0.0.1N:8080 and its NATS
# server on 127.0.0.1N:4222 (routes :6222, monitoring :8222). A dnsmasq in
# the namespace answers `tributary.test` with all three addresses, rotating
# their order on every answer (that rotation is the round-robin: clients
# such as ffmpeg connect to the first address getaddrinfo returns, and
# glibc keeps the server's order for these addresses). `ip netns exec`
# gives the namespace's processes /etc/netns/NAME/{resolv.conf,hosts,
# nsswitch.conf} in place of the machine's, so the machine's own resolver
# and network are never touched.
#
# The NATS servers run deploy/nats/nats-{1,2,3}.conf and the nodes
# deploy/config/node.example.toml, with only addresses and directories
# changed, so this also checks those files. That config is closed: `up`
# runs deploy/make-secrets into $TRIB_STATE_DIR/secrets, the NATS servers
# ask for its token, and publishing needs its stream key
# (secrets/stream-keys: publish rtmp://NAME/live/KEY with that line's KEY),
# /api/* its admin token.
#
# Needs root (network namespaces, /etc/netns), nats-server, dnsmasq and ip
# (Debian: apt-get install nats-server dnsmasq-base iproute2), and the
# tributary binary: $TRIBUTARY_BIN, else target/release/tributary, else
# target/debug/tributary (cargo build --release), else `tributary` on PATH.
#
# Environment (so tests and a user's own cluster never collide):
#   TRIB_NETNS      namespace name                         (tribnet)
#   TRIB_STATE_DIR  PIDs, logs, NATS stores                (/tmp/tributary-$TRIB_NETNS)
#   TRIB_NAME       the round-robin host name              (tributary.test)
#   TRIB_SHARDS     shards per node                        (1)
set -euo pipefail
# dnsmasq and ip live in sbin, which a plain user PATH (sudo keeps it) may lack.
PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(dirname "$here")"
ns="${TRIB_NETNS:-tribnet}"
state="${TRIB_STATE_DIR:-/tmp/tributary-$ns}"
name="${TRIB_NAME:-tributary.test}"
shards="${TRIB_SHARDS:-1}"
netns_etc="/etc/netns/$ns"
nodes=(1 2 3)

die() {
  echo "local-cluster: $*" >&2
  exit 1
}
say() { echo "local-cluster: $*"; }
have() { command -v "$1" >/dev/null 2>&1; }

need_root() {
  [ "$(id -u)" -eq 0 ] ||
    die "needs root: it creates the network namespace '$ns' and writes $netns_etc (run it with sudo)"
}

need_tools() {
  local missing=()
  have ip || missing+=(iproute2)
  have nats-server || missing+=(nats-server)
  have dnsmasq || missing+=(dnsmasq-base)
  [ ${#missing[@]} -eq 0 ] ||
    die "missing ${missing[*]} (Debian/Ubuntu: apt-get install ${missing[*]})"
}

find_binary() {
  local candidate
  if [ -n "${TRIBUTARY_BIN:-}" ]; then
    [ -x "$TRIBUTARY_BIN" ] || die "TRIBUTARY_BIN=$TRIBUTARY_BIN is not an executable file"
    echo "$TRIBUTARY_BIN"
    return
  fi
  for candidate in "$repo/target/release/tributary" "$repo/target/debug/tributary" \
    "$(command -v tributary || true)"; do
    if [ -n "$candidate" ] && [ -x "$candidate" ]; then
      echo "$candidate"
      return
    fi
  done
  die "no tributary binary: build it (cargo build --release) or set TRIBUTARY_BIN"
}

# A process we started: "PID STARTTIME" in $state/NAME.pid. The start time
# (field 22 of /proc/PID/stat) guards against a recycled PID: we only ever
# signal the process we recorded. Fails if PID is gone or a zombie.
start_time() {
  local stat
  stat="$(cat "/proc/$1/stat" 2>/dev/null)" || return 1
  # The command name (field 2) may hold spaces: cut after its ')'.
  stat="${stat##*) }"
  # shellcheck disable=SC2086
  set -- $stat
  # An exited process waiting to be reaped (Z) has stopped.
  [ "$1" != Z ] || return 1
  echo "${20}"
}

record() {
  local what="$1" pid="$2" started
  started="$(start_time "$pid")" || die "$what exited at once; see $state/$what.log"
  echo "$pid $started" >"$state/$what.pid"
}

# Prints the PID if the recorded process still runs.
alive() {
  local file="$state/$1.pid" pid started now
  [ -f "$file" ] || return 1
  read -r pid started <"$file"
  now="$(start_time "$pid")" || return 1
  [ "$now" = "$started" ] || return 1
  echo "$pid"
}

# Runs a command in the namespace, detached, its output in $state/WHAT.log.
# `ip netns exec` execs the command, so $! is the command's own PID.
spawn() {
  local what="$1"
  shift
  ip netns exec "$ns" "$@" </dev/null >>"$state/$what.log" 2>&1 &
  record "$what" "$!"
}

# GET on an HTTP address inside the namespace: prints the status code, a
# tab, and the body (empty status if nothing answers).
http_get() {
  {
    ip netns exec "$ns" bash -c '
      exec 3<>"/dev/tcp/$1/$2" || exit 0
      printf "GET %s HTTP/1.0\r\nHost: %s:%s\r\nAuthorization: Bearer %s\r\n\r\n" "$3" "$1" "$2" "$4" >&3
      timeout 5 cat <&3' _ "$1" "$2" "$3" "$(cat "$state/secrets/admin-token" 2>/dev/null)" 2>/dev/null |
      tr -d '\r' | awk 'NR == 1 { printf "%s\t", $2; next } body { print } /^$/ { body = 1 }'
  } || true
}

# Waits (with a deadline) until `http_get ADDR PORT PATH` answers 200.
wait_http() {
  local what="$1" addr="$2" port="$3" path="$4" deadline=$((SECONDS + 40))
  while :; do
    [[ "$(http_get "$addr" "$port" "$path")" == 200$'\t'* ]] && return
    alive "$what" >/dev/null || die "$what exited; its log ($state/$what.log) ends with:
$(tail -n 15 "$state/$what.log")"
    [ $SECONDS -lt $deadline ] || die "$what did not answer http://$addr:$port$path in 40 s; see $state/$what.log"
    sleep 0.2
  done
}

running() {
  local what
  for what in dnsmasq nats-1 nats-2 nats-3 node-1 node-2 node-3; do
    alive "$what" >/dev/null && return 0
  done
  return 1
}

up() {
  need_root
  need_tools
  local bin
  bin="$(find_binary)"
  say "node binary: $bin"
  if running; then
    local what
    for what in dnsmasq nats-1 nats-2 nats-3 node-1 node-2 node-3; do
      alive "$what" >/dev/null || die "partly up ($what is not running): '$0 status' shows it, '$0 down' clears it"
    done
    say "already up (namespace $ns, state $state); '$0 status' shows it, '$0 down' stops it"
    return
  fi
  if [ -e "/run/netns/$ns" ]; then
    die "namespace $ns exists but nothing recorded in $state runs: '$0 down' first (or pick another TRIB_NETNS)"
  fi
  mkdir -p "$state"
  rm -f "$state"/*.log
  # A failed start leaves nothing behind (the logs stay for a look).
  trap 'down >/dev/null' EXIT

  ip netns add "$ns"
  ip -n "$ns" link set lo up
  # The namespace's own view of /etc: names of the NATS hosts, our DNS
  # server, and plain files+dns lookups (a host using systemd-resolved
  # through nss-resolve would otherwise bypass resolv.conf).
  mkdir -p "$netns_etc"
  {
    echo "127.0.0.1 localhost"
    for i in "${nodes[@]}"; do echo "127.0.0.1$i nats-$i.tributary.internal node-$i"; done
  } >"$netns_etc/hosts"
  echo "nameserver 127.0.0.1" >"$netns_etc/resolv.conf"
  printf 'hosts: files dns\n' >"$netns_etc/nsswitch.conf"

  local records=()
  for i in "${nodes[@]}"; do records+=("--host-record=$name,127.0.0.1$i"); done
  spawn dnsmasq dnsmasq --keep-in-foreground --conf-file=/dev/null --no-resolv --no-hosts \
    --bind-interfaces --listen-address=127.0.0.1 --pid-file= --log-facility=- "${records[@]}"

  "$here/make-secrets" "$state/secrets" >/dev/null
  sed -e "s|/etc/tributary/secrets/|$state/secrets/|" "$here/config/node.example.toml" >"$state/node.toml"
  grep -q "$state/secrets/admin-token" "$state/node.toml" ||
    die "deploy/config/node.example.toml no longer reads its secrets from /etc/tributary/secrets"
  for i in "${nodes[@]}"; do
    local conf="$state/nats-$i.conf" store="$state/nats-$i"
    mkdir -p "$store"
    sed -e "s|0\.0\.0\.0:|127.0.0.1$i:|g" -e "s|127\.0\.0\.1:8222|127.0.0.1$i:8222|" \
      -e "s|/var/lib/nats/jetstream|$store|" "$here/nats/nats-$i.conf" >"$conf"
    grep -q "^listen: 127.0.0.1$i:4222" "$conf" && grep -q "store_dir: $store" "$conf" ||
      die "deploy/nats/nats-$i.conf no longer has the listen/store_dir lines this script rewrites"
    spawn "nats-$i" nats-server -c "$conf" --auth "$(cat "$state/secrets/nats-token")"
  done
  for i in "${nodes[@]}"; do wait_http "nats-$i" "127.0.0.1$i" 8222 /healthz; done

  for i in "${nodes[@]}"; do
    spawn "node-$i" "$bin" --config "$state/node.toml" --node-id "node-$i" \
      --rtmp-listen "127.0.0.1$i:1935" --http-listen "127.0.0.1$i:8080" --shards "$shards"
  done
  # A node answers a cluster listing once it reached the JetStream registry
  # (three replicas: the NATS servers have formed their JetStream cluster).
  for i in "${nodes[@]}"; do wait_http "node-$i" "127.0.0.1$i" 8080 "/api/streams?scope=cluster"; done

  trap - EXIT
  local resolved
  resolved="$(ip netns exec "$ns" getent ahosts "$name" | awk '/STREAM/ { printf "%s ", $1 }')"
  say "up: $name resolves to ${resolved:-nothing?} inside namespace $ns"
  local key
  key="$(head -1 "$state/secrets/stream-keys")"
  say "publish: ip netns exec $ns ffmpeg -re -i IN.mp4 -c copy -f flv rtmp://$name/$key"
  say "play:    ip netns exec $ns ffplay rtmp://$name/$key"
  say "admin:   token in $state/secrets/admin-token"
  say "state and logs: $state"
}

status() {
  need_root
  if ! running; then
    say "not up (namespace $ns, state $state)"
    return 1
  fi
  local what
  for what in dnsmasq nats-1 nats-2 nats-3 node-1 node-2 node-3; do
    printf '%-8s %s\n' "$what" "$(alive "$what" >/dev/null && echo "running (pid $(alive "$what"))" || echo DOWN)"
  done
  echo "$name -> $(ip netns exec "$ns" getent ahosts "$name" | awk '/STREAM/ { printf "%s ", $1 }')"
  for i in "${nodes[@]}"; do
    echo "node-$i /api/node: $(http_get "127.0.0.1$i" 8080 /api/node | cut -f2-)"
  done
  for i in "${nodes[@]}"; do
    local answer
    answer="$(http_get "127.0.0.1$i" 8080 "/api/streams?scope=cluster")"
    if [[ "$answer" == 200$'\t'* ]]; then
      echo "cluster streams (from node-$i): ${answer#*$'\t'}"
      return
    fi
  done
  echo "cluster streams: no node answers /api/streams?scope=cluster"
}

# SIGTERM to what we recorded, then wait with a deadline (a node drains in
# up to ~7 s); SIGKILL only if it is still there.
stop() {
  local pids=() what pid deadline=$((SECONDS + 12))
  for what in "$@"; do
    pid="$(alive "$what")" && kill -TERM "$pid" && pids+=("$what")
  done
  for what in "${pids[@]}"; do
    while alive "$what" >/dev/null && [ $SECONDS -lt $deadline ]; do sleep 0.1; done
    if pid="$(alive "$what")"; then
      say "$what (pid $pid) did not stop in time: SIGKILL"
      kill -KILL "$pid"
    fi
  done
  for what in "$@"; do rm -f "$state/$what.pid"; done
}

down() {
  need_root
  # Nodes first, so they delete their registry entries while NATS is there.
  if [ -d "$state" ]; then
    stop node-1 node-2 node-3
    stop nats-1 nats-2 nats-3
    stop dnsmasq
  fi
  if [ -e "/run/netns/$ns" ]; then ip netns del "$ns"; fi
  rm -rf "$netns_etc"
  if [ -d "$state" ]; then
    rm -rf "$state"/nats-? "$state"/*.conf
    say "down; logs kept in $state"
  else
    say "down"
  fi
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  *)
    echo "usage: $0 up|down|status   (environment: TRIB_NETNS, TRIB_STATE_DIR, TRIB_NAME, TRIB_SHARDS, TRIBUTARY_BIN)" >&2
    exit 2
    ;;
esac
