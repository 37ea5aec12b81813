#!/usr/bin/env bash
# Installs what the build and the tests need and is not there yet; skips what is. Run by
# `make dev` (`make setup`) and `make test` (`make setup-test`). Only package registries are used: crates.io
# for the Rust tools, npm for wrangler and esbuild (versions pinned in package-lock.json).
set -euo pipefail
cd "$(dirname "$0")/.."

WORKER_BUILD_VERSION=0.8.7
# wasm-bindgen-cli must equal the wasm-bindgen in Cargo.lock.
WASM_BINDGEN_VERSION=$(awk '/^name = "wasm-bindgen"$/ { getline; gsub(/"/, "", $3); print $3; exit }' Cargo.lock)
CARGO_BIN="${CARGO_HOME:-$HOME/.cargo}/bin"
export PATH="$CARGO_BIN:$PATH"

for tool in cargo rustup node npm; do
  command -v "$tool" >/dev/null || { echo "setup: $tool is missing: install Rust (rustup) and Node.js 20" >&2; exit 1; }
done

if ! rustup target list --installed | grep -qx wasm32-unknown-unknown; then
  rustup target add wasm32-unknown-unknown
fi

if ! worker-build --version 2>/dev/null | grep -Eq "(^| )$WORKER_BUILD_VERSION\$"; then
  cargo install --locked --force worker-build --version "$WORKER_BUILD_VERSION"
fi

if [ -z "$WASM_BINDGEN_VERSION" ]; then
  echo "setup: no wasm-bindgen in Cargo.lock" >&2
  exit 1
fi
if ! wasm-bindgen --version 2>/dev/null | grep -q " $WASM_BINDGEN_VERSION\$"; then
  # `--locked` can fail to resolve for this crate; the exact version is what matters.
  cargo install --force wasm-bindgen-cli --version "$WASM_BINDGEN_VERSION"
fi

if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ] \
   || [ ! -x node_modules/.bin/wrangler ] || [ ! -x node_modules/.bin/esbuild ]; then
  npm ci --no-audit --no-fund
fi

# `setup.sh test` also brings what only the tests use: Chromium for the browser tests, and
# Python's venv for schemathesis (installed from PyPI into target/ by its test).
if [ "${1:-}" = "test" ]; then
  missing=()
  [ -x /usr/bin/chromium ] || missing+=(chromium)
  python3 -m venv --help >/dev/null 2>&1 || missing+=(python3-venv)
  command -v python3 >/dev/null || missing+=(python3 python3-venv)
  if [ "${#missing[@]}" -gt 0 ]; then
    sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}"
  fi
fi

if [ ! -f .dev.vars ]; then
  cp .dev.vars.example .dev.vars
  echo "setup: wrote .dev.vars from .dev.vars.example"
else
  # A .dev.vars from an older clone keeps its values, and gets every setting the example has
  # gained since (with the example's value), so it never silently lacks one.
  while IFS= read -r line; do
    case "$line" in ''|'#'*) continue ;; esac
    name="${line%%=*}"
    if ! grep -q "^${name}=" .dev.vars; then
      printf '%s\n' "$line" >> .dev.vars
      echo "setup: added ${name} to .dev.vars from .dev.vars.example"
    fi
  done < .dev.vars.example
fi
