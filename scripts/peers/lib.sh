# shellcheck shell=bash
# Sourced by the peer build scripts: where built test peers are cached, and how one is built.
#
# Peers (the Consul agent, go-micro services) are Go programs fetched as modules at exact
# versions and built with the machine's Go. Their binaries live OUTSIDE the checkout, keyed by
# name and version, so a fresh clone reuses them and nothing built is ever committed:
#   ${MICROWEAVE_PEERS:-${XDG_CACHE_HOME:-$HOME/.cache}/microweave/peers}/<name>-<version>/
set -euo pipefail

PEERS=${MICROWEAVE_PEERS:-${XDG_CACHE_HOME:-$HOME/.cache}/microweave/peers}

peer_dir() { printf '%s/%s-%s\n' "$PEERS" "$1" "$2"; }

need_go() {
  if ! command -v go >/dev/null 2>&1; then
    for candidate in /usr/local/go/bin /usr/lib/go/bin; do
      [[ -x $candidate/go ]] && PATH=$candidate:$PATH && break
    done
  fi
  command -v go >/dev/null 2>&1 || {
    echo "error: Go is needed to build the test peers and is not on PATH" >&2
    echo "  -> install Go >= 1.22 (https://go.dev/dl/ or apt-get install golang) and rerun" >&2
    exit 2
  }
}

# progress NAME PID: a dot every 30 s while a long build runs, so CI logs show it is alive
progress() {
  local name=$1 pid=$2 start=$SECONDS
  while kill -0 "$pid" 2>/dev/null; do
    sleep 30
    kill -0 "$pid" 2>/dev/null && echo "    ... still building $name ($((SECONDS - start)) s)" >&2
  done
  wait "$pid"
}
