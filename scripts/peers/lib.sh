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

# go_install_peer NAME BINARY MODULE@VERSION DIR LDFLAGS COLD [--path]
# `go install`s a command of a module that has no replace directives (helm, kubeconform, the
# nats CLI) into DIR, once: a warm run only prints DIR/BINARY. With --path it never builds, and
# exits 3 when there is nothing built yet (the tests ask that way). COLD says how long a cold
# build takes, for the progress line.
go_install_peer() {
  local name=$1 binary=$2 module=$3 dir=$4 ldflags=$5 cold=$6 mode=${7:-}
  if [[ -x $dir/$binary ]]; then
    echo "$dir/$binary"
    return 0
  fi
  if [[ $mode == --path ]]; then
    echo "$name is not built: run scripts/peers/$name" >&2
    return 3
  fi
  need_go
  echo "==> building $name (${module##*@}; cold: $cold; cached in $dir)" >&2
  local start=$SECONDS work
  work=$(mktemp -d "${TMPDIR:-/tmp}/$name-build.XXXXXX")
  ( cd "$work" && GOBIN=$work/bin GOFLAGS=-mod=mod \
      go install -trimpath -ldflags "$ldflags" "$module" >"$work/build.log" 2>&1 ) &
  if ! progress "$name" $!; then
    tail -30 "$work/build.log" >&2
    echo "error: building $name ${module##*@} failed (log above)" >&2
    rm -rf "$work"
    return 1
  fi
  mkdir -p "$dir"
  mv "$work/bin/$binary" "$dir/$binary.tmp" && mv "$dir/$binary.tmp" "$dir/$binary"
  rm -rf "$work"
  echo "    built in $((SECONDS - start)) s" >&2
  echo "$dir/$binary"
}
