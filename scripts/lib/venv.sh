# shellcheck shell=bash
# Sourced by scripts/demo and scripts/test: find a Python >= 3.11, make or reuse the checkout's
# virtualenv, install microweave into it.
#
# Why a virtualenv: Debian, Ubuntu and Homebrew Pythons refuse `pip install` into the system
# interpreter (PEP 668, "externally-managed-environment"). A venv inside the checkout works on
# every Python, needs no root, and is thrown away with `rm -rf .venv`.
#
# Settings (environment):
#   PYTHON=/path/to/python3.11   the interpreter the venv is made from (default: the first of
#                                python3, python3.13, python3.12, python3.11 that is >= 3.11);
#                                a venv made from another interpreter is remade
#   MICROWEAVE_VENV=dir          where the venv lives (default: .venv in the checkout)

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
VENV=${MICROWEAVE_VENV:-$ROOT/.venv}
# the seconds each step took, for the summary: "name<TAB>seconds<TAB>ok|FAILED"
STEPS=()

if [[ -t 2 && -z ${NO_COLOR:-} ]]; then
  _bold=$'\033[1m' _red=$'\033[1;31m' _green=$'\033[32m' _dim=$'\033[2m' _off=$'\033[0m'
else
  _bold='' _red='' _green='' _dim='' _off=''
fi

say() { printf '%s==> %s%s\n' "$_bold" "$*" "$_off" >&2; }
note() { printf '%s    %s%s\n' "$_dim" "$*" "$_off" >&2; }

# fail MESSAGE [WHAT-TO-DO ...]: the problem, then one line per thing the user can do about it
fail() {
  printf '%serror:%s %s\n' "$_red" "$_off" "$1" >&2
  shift
  local line
  for line in "$@"; do printf '  -> %s\n' "$line" >&2; done
  exit 2
}

_now() {
  local t=${EPOCHREALTIME:-}
  if [[ -n $t ]]; then printf '%s\n' "${t/,/.}"; else date +%s; fi
}

_elapsed() { awk -v a="$1" -v b="$(_now)" 'BEGIN { printf "%.1f", b - a }'; }

# step NAME COMMAND...: run it, say how long it took, remember it for `summary`; returns its status
step() {
  local name=$1 start status=0 took
  shift
  say "$name"
  start=$(_now)
  "$@" || status=$?
  took=$(_elapsed "$start")
  if ((status == 0)); then
    printf '%s    %s: ok in %ss%s\n' "$_green" "$name" "$took" "$_off" >&2
    STEPS+=("$name"$'\t'"$took"$'\t'"ok")
  else
    printf '%s    %s: FAILED (exit %d) after %ss%s\n' "$_red" "$name" "$status" "$took" "$_off" >&2
    STEPS+=("$name"$'\t'"$took"$'\t'"FAILED")
  fi
  return "$status"
}

summary() {
  local entry name took result
  say "time per step"
  for entry in "${STEPS[@]}"; do
    IFS=$'\t' read -r name took result <<<"$entry"
    printf '    %-34s %7ss  %s\n' "$name" "$took" "$result" >&2
  done
}

_py_ok() { "$1" -c 'import sys; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1; }
_py_version() {
  local v
  v=$("$1" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null) || true
  printf '%s\n' "${v:-?}"
}
# the interpreter behind a command (pyenv shims, symlinks and venvs resolved), to compare two
_py_base() {
  "$1" -c 'import os, sys; print(os.path.realpath(getattr(sys, "_base_executable", sys.executable)))' \
    2>/dev/null
}

# Sets PY to the interpreter to build the venv from.
find_python() {
  if [[ -n ${PYTHON:-} ]]; then
    command -v "$PYTHON" >/dev/null 2>&1 ||
      fail "PYTHON=$PYTHON: no such command" \
        "give the path of a Python 3.11 or newer, e.g. PYTHON=/usr/bin/python3.11 $0" \
        "or unset PYTHON to use the first python3 on PATH that is 3.11+"
    _py_ok "$PYTHON" ||
      fail "PYTHON=$PYTHON is Python $(_py_version "$PYTHON"); microweave needs 3.11 or newer" \
        "on Debian/Ubuntu: apt-get install python3.11 python3.11-venv, then PYTHON=python3.11 $0"
    PY=$PYTHON
    return
  fi
  local candidate seen=""
  for candidate in python3 python3.13 python3.12 python3.11; do
    command -v "$candidate" >/dev/null 2>&1 || continue
    if _py_ok "$candidate"; then
      PY=$candidate
      return
    fi
    seen+=" $candidate ($(_py_version "$candidate"))"
  done
  fail "no Python 3.11 or newer on PATH${seen:+ (found:$seen)}" \
    "on Debian/Ubuntu: apt-get install python3.11 python3.11-venv (Ubuntu 22.04: from the deadsnakes PPA)" \
    "or point at one: PYTHON=/path/to/python3.11 $0"
}

_venv_works() {
  [[ -x $VENV/bin/python ]] && _py_ok "$VENV/bin/python" &&
    "$VENV/bin/python" -m pip --version >/dev/null 2>&1
}

_create_venv() {
  local version
  version=$(_py_version "$PY")
  if ! "$PY" -c 'import ensurepip, venv' >/dev/null 2>&1; then
    fail "$PY (Python $version) cannot make a virtualenv: its venv/ensurepip modules are missing" \
      "on Debian/Ubuntu: apt-get install python$version-venv   (as root, or with sudo)" \
      "then run $0 again"
  fi
  say "creating a virtualenv in ${VENV/#$ROOT\//} with $PY (Python $version)"
  local start
  start=$(_now)
  if ! "$PY" -m venv "$VENV"; then
    rm -rf "$VENV" # a half-made venv (no pip) would only fail later, less clearly
    fail "$PY -m venv $VENV failed (see above)" \
      "on Debian/Ubuntu: apt-get install python$version-venv; then run $0 again"
  fi
  STEPS+=("create virtualenv"$'\t'"$(_elapsed "$start")"$'\t'"ok")
}

# Makes sure $VENV is a working venv from the interpreter asked for; sets VPY to its python.
ensure_venv() {
  find_python
  if [[ -e $VENV ]]; then
    if ! _venv_works; then
      say "${VENV/#$ROOT\//} is broken or half-made (no working python or pip in it): making it again"
      rm -rf "$VENV"
    elif [[ -n ${PYTHON:-} && "$(_py_base "$VENV/bin/python")" != "$(_py_base "$PY")" ]]; then
      say "${VENV/#$ROOT\//} was made with $(_py_base "$VENV/bin/python"); PYTHON=$PYTHON asks for" \
        "$(_py_base "$PY"): making it again"
      rm -rf "$VENV"
    fi
  fi
  [[ -e $VENV ]] || _create_venv
  VPY=$VENV/bin/python
  note "using ${VENV/#$ROOT\//} (Python $(_py_version "$VPY"))"
}

_fingerprint() {
  "$VPY" -c 'import hashlib, sys; print(hashlib.sha256(open(sys.argv[1], "rb").read()).hexdigest()[:16])' \
    "$ROOT/pyproject.toml"
}

# microweave installed in editable mode from this checkout (so the sources are the ones run)?
_installed_here() {
  local origin
  origin=$("$VPY" -c 'import importlib.util as u; s = u.find_spec("microweave"); print(s.origin if s else "")' \
    2>/dev/null) || return 1
  [[ $origin == "$ROOT/src/microweave/"* ]]
}

# install_microweave EXTRAS: `pip install -e ".[EXTRAS]"` into the venv, skipped when it was done
# for this pyproject.toml already (an editable install picks up source changes by itself).
install_microweave() {
  local extras=$1 spec=. stamp want
  [[ -n $extras ]] && spec=".[$extras]"
  stamp=$VENV/.microweave-installed
  want="$(_fingerprint) ${extras:-base}"
  if [[ -f $stamp ]] && grep -qxF "$want" "$stamp" && _installed_here; then
    note "microweave${extras:+[$extras]} already installed from this checkout (pyproject.toml unchanged)"
    return
  fi
  if [[ -z $extras ]] && [[ -f $stamp ]] && grep -qxF "$(_fingerprint) dev" "$stamp" && _installed_here; then
    note "microweave already installed from this checkout (with the dev extras)"
    return
  fi
  local start
  start=$(_now)
  say "installing microweave${extras:+[$extras]} into ${VENV/#$ROOT\//} (pip install -e \"$spec\"; the first" \
    "time it downloads grpcio and friends: a minute or more)"
  if ! (cd "$ROOT" && "$VPY" -m pip install --disable-pip-version-check -e "$spec"); then
    fail "pip install -e \"$spec\" failed (see above)" \
      "no network? pip needs to reach its package index (set PIP_INDEX_URL for a mirror)" \
      "to start from scratch: rm -rf ${VENV/#$ROOT\//}, then run $0 again"
  fi
  echo "$want" >>"$stamp"
  STEPS+=("pip install -e $spec"$'\t'"$(_elapsed "$start")"$'\t'"ok")
}
