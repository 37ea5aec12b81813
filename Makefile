# edgehub: `make dev` runs the hub locally, `make test` runs every test. Both install what is
# missing first (Rust target, worker-build, wasm-bindgen-cli, npm packages) and skip what is there.
SHELL := /bin/bash
.DEFAULT_GOAL := help

CARGO_BIN := $(or $(CARGO_HOME),$(HOME)/.cargo)/bin
PORT ?= 8787

export WASM_BINDGEN_BIN := $(CARGO_BIN)/wasm-bindgen
export ESBUILD_BIN := $(CURDIR)/node_modules/.bin/esbuild
export PATH := $(CARGO_BIN):$(CURDIR)/node_modules/.bin:$(PATH)
export WRANGLER_SEND_METRICS := false
# Keep wrangler off the network: no request.cf download, no telemetry.
export CLOUDFLARE_CF_FETCH_ENABLED := false

# The JavaScript client (clients/js): the Worker serves its build at /client.js.
CLIENT := clients/js/dist/index.js
CLIENT_SOURCES := $(shell find clients/js/src -name '*.ts') clients/js/build.mjs clients/js/tsconfig.json clients/js/package.json
RUST_SOURCES := $(shell find src -name '*.rs') assets/demo.html Cargo.toml Cargo.lock $(CLIENT)
WRANGLER := node_modules/.bin/wrangler

.PHONY: help setup setup-test dev dev-wrangler test build bundle check token clean bench

help:
	@echo "make dev    install what is missing, then run the hub at http://127.0.0.1:$(PORT)"
	@echo "make test   install what is missing, then run every test"
	@echo "make token  print a development token (ARGS='--publish \"*\" --subscribe \"*\"')"
	@echo "make bench  build the release Worker and benchmark it (ARGS=--quick for a smoke run)"

# Installs whatever is missing (see scripts/setup.sh); quick when everything is there.
setup:
	@scripts/setup.sh

# The same, plus what only the tests need (Chromium, Python's venv).
setup-test:
	@scripts/setup.sh test

# The Worker bundle: build/worker/shim.mjs and the wasm beside it, after the client it serves.
build: setup $(CLIENT) build/worker/shim.mjs

# The client's build, with its size against the budget (clients/js/build.mjs). The build is
# committed too, so that cargo alone (clippy, the unit tests) finds what the Worker embeds.
$(CLIENT): $(CLIENT_SOURCES)
	node clients/js/build.mjs

build/worker/shim.mjs: $(RUST_SOURCES)
	worker-build --release
	@touch $@

# The hub on workerd without wrangler dev's proxy (scripts/serve.mjs); it applies the D1
# migrations and restarts workerd if it ever exits. A plain TCP front in serve.mjs caps the
# connections under the open-file limit it reads at start (9,244 streams + 256 others under
# 20,000): past them new connections are refused (503) while everyone connected stays served,
# and they are taken again once others close, with no restart. It prints the caps when ready;
# ARGS=--no-front serves workerd straight on the port (about twice the streams, but workerd
# exits at its limit). `make dev-wrangler` runs `wrangler dev` instead (rebuilds and reloads on
# change, behind its proxy).
dev: build
	node scripts/serve.mjs --ip 127.0.0.1 --port $(PORT) --restart $(ARGS)

dev-wrangler: build
	$(WRANGLER) d1 migrations apply DB --local
	$(WRANGLER) dev --ip 127.0.0.1 --port $(PORT)

# Unit tests of the pure core natively, the client's typed examples compiled, the end-to-end
# suite against the local runtime (`scripts/serve.mjs`), the demo page in headless Chromium, then the JavaScript client
# against the real hub (clients/js/test). The 1,000-member presence storm runs alone after the rest:
# beside another test on two cores, wrangler dev's local proxy drops connections under it
# (issue 18), which the storm would count against the hub.
STORM := presence_join_storm_of_1000_members_while_events_flow
test: setup-test bundle
	cargo test --lib --bins
	node_modules/.bin/tsc -p clients/js/examples
	cargo test --test e2e -- --skip $(STORM)
	cargo test --test e2e -- --exact $(STORM)
	cargo build -q -p edgehub-launch --bin edgehub-launch
	node --test tests/browser/
	node --test clients/js/test/*.test.mjs

# Proves the deploy bundle without an account: what `wrangler deploy` would upload, checked for
# the wasm module and the Durable Object class export.
bundle: build
	rm -rf target/deploy-bundle
	$(WRANGLER) deploy --dry-run --outdir target/deploy-bundle > target/deploy-bundle.log 2>&1 || { cat target/deploy-bundle.log; exit 1; }
	ls target/deploy-bundle/*.wasm > /dev/null
	grep -q 'ChannelHub' target/deploy-bundle/shim.js
	@echo "deploy bundle: ok ($$(du -sh target/deploy-bundle | cut -f1))"

check: setup
	cargo fmt --check
	cargo clippy --target wasm32-unknown-unknown -- -D warnings
	cargo clippy --all-targets -- -D warnings

# Benchmarks the release Worker and a no-op Worker under wrangler dev (docs/benchmarks.md);
# writes bench/results.json and the table in docs/benchmarks.md. ARGS=--quick for a smoke run.
# The bench tool is native; it skips the Worker's size-tuned LTO profile and builds apart.
bench: build
	CARGO_TARGET_DIR=target/bench-build CARGO_PROFILE_RELEASE_LTO=false \
	  CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 CARGO_PROFILE_RELEASE_OPT_LEVEL=3 \
	  cargo run --release --locked -p edgehub-bench -- $(ARGS)

token: setup
	@cargo run -q --bin edgehub-token -- $(ARGS)

clean:
	rm -rf build target .wrangler
