# missionstream — build, test, demo, benchmark.
#   make demo    a leader and a follower on a local Redis + Webdis; prints the
#                URL of the live plan view where its survey plan can be watched
#   make demo-ha the demo on 3 Redis nodes + Sentinel; the primary is killed mid-stream
#   make test    every suite (installs what is missing)
#   make test-js    the JavaScript package (bindings/js): its types (tsc), node
#                --test against real Redis + Webdis (one node and the replicated
#                topology through a killed primary), the library both ways, npm pack
#   make test-view  the live plan view (web/view) in a headless Chromium behind
#                deploy/nginx-view.conf (TLS, HTTP/2); screenshot in target/js-view/
#   make bench   the performance figures beside their baselines (the output
#                also in target/bench/full.txt; bench-quick: quick.txt;
#                bench-ha, rows 9-11 alone: ha.txt)
#   make bench-compare  a baseline revision's benchmark beside the current
#                one, interleaved (BASE, ROUNDS, ROWS): target/bench/compare.md
#   make bench-peers   the rows that apply beside Mosquitto 2 and NATS
#                JetStream KV, same C measurement code, interleaved rounds
#                (MS_PEERS_ROUNDS, 5; about 3 minutes; not in make test)
#   make test-under-load   make test RUNS (5) times in a row under stress-ng
#   make attack  the attacks of docs/SECURITY.md ("Availability", "The TLS
#                front against attacks") against the deploy configuration and
#                its front, each with the figure it is judged by (the ones on
#                Redis repeated for MS_ATTACK_SECONDS, 10)
#   make mutants deliberate bugs of tests/mutants/mutations.toml, each run
#                against the tests that should catch it (MUTANTS="id ...": some)
#   make mutants-lib   cargo-mutants' own mutations of the pure modules
#                (no servers: cargo test --lib), installed when missing
#   make stress-ffi  the callback / disconnect / free paths of the C ABI,
#                many rounds under valgrind (MS_FFI_ROUNDS, MS_FFI_RUNS;
#                about 4 minutes; not in make test)
#   make stress-ffi-tsan  the same paths under ThreadSanitizer (nightly
#                Rust, std rebuilt instrumented; both installed through
#                rustup when missing): TSAN_RUNS (20) runs of the callback /
#                disconnect / free tests of tests/ffi.rs, a race fails the
#                run; 4 to 5 minutes, the first build about 7 more; not
#                in make test. Last run (2026-12-07): 20 of 20 passed in
#                283 s of runs, no race reported
#   make soak    a few minutes of faults under load (MS_SOAK_SECONDS,
#                MS_SOAK_WEBDIS_KILLS, MS_SOAK_REDIS_RESTARTS, MS_SOAK_FREEZES)
#   make install PREFIX=/usr/local DESTDIR=   the C library, headers,
#                pkg-config file and CMake package; make uninstall removes them
#   make header  refreshes include/missionstream.h from the generated one
#   make server / server-stop   a local Redis + Webdis; `. .run/server/env`
#                sets MISSIONSTREAM_URL for the command line and the examples
#   make cluster / cluster-stop   the replicated topology (3 Redis, 3 Sentinels,
#                one Webdis per node); `. .run/cluster/env` sets MS_URLS and
#                MISSIONSTREAM_URL (docs/DEPLOYMENT.md)
# PYTHON=/usr/bin/python3 (default: python3) picks the interpreter of the
# demo and of the Python suite, which runs from a virtual environment made
# from it under .run/ (system Pythons refuse `pip install`).
CARGO ?= cargo
PYTHON ?= python3
RUN_DIR := .run/server
CLUSTER_DIR := .run/cluster
TEST_VENV := .run/test-venv

.PHONY: all build deps deps-test bench-fanin test test-rust test-ffi-asan test-js typecheck-js test-view test-ffi-valgrind stress-ffi stress-ffi-tsan test-c test-install test-python \
        check-header header \
        fmt-check clippy install uninstall demo demo-ha server server-stop cluster cluster-stop \
        bench bench-quick bench-ha bench-compare bench-peers bench-peers-build attack test-under-load soak mutants mutants-lib mutants-check clean

all: build

deps:
	@scripts/install-deps.sh

deps-test:
	@PYTHON="$(PYTHON)" MS_TEST_VENV="$(TEST_VENV)" scripts/install-deps.sh --python-tests

build: deps
	@[ -e "$${CARGO_TARGET_DIR:-target}/release/libmissionstream.so" ] || echo "make: the first build compiles the library and its dependencies: about 6 minutes on 2 cores (later builds take seconds)"
	$(CARGO) build --release

test: deps-test build check-header fmt-check clippy mutants-check test-rust test-ffi-asan test-ffi-valgrind test-c test-install \
      test-python test-js test-view bench-quick bench-peers-build
	@echo "make test: all suites passed"

test-rust:
	MISSIONSTREAM_DEBUG=1 $(CARGO) test --release

# The Rust tests that cross the C ABI (tests/ffi.rs) under
# AddressSanitizer, with a nightly toolchain it installs through rustup
# (scripts/asan-ffi.sh; says loudly when none can be had: the valgrind
# run below covers the same tests).
test-ffi-asan: deps
	scripts/asan-ffi.sh

# The Rust tests that cross the C ABI (tests/ffi.rs) under valgrind's
# memcheck: a callback on freed user data, a bad free or a client never
# freed fails it (scripts/valgrind-ffi.sh; valgrind missing is an error).
test-ffi-valgrind: deps
	scripts/valgrind-ffi.sh

# The callback paths of tests/ffi.rs (a client freed while states flow, a
# follow ended, a callback replaced and its data freed, Webdis killed)
# many rounds under memcheck; too slow for make test.
stress-ffi: deps
	scripts/valgrind-ffi.sh --stress

# The callback / disconnect / free tests of tests/ffi.rs under
# ThreadSanitizer (std rebuilt instrumented), TSAN_RUNS times
# (scripts/tsan-ffi.sh: a nightly toolchain and rust-src through rustup;
# when they cannot be had it fails, unless MS_TSAN_SKIP_UNAVAILABLE=1).
stress-ffi-tsan: deps
	scripts/tsan-ffi.sh

test-c:
	tests/c/run.sh

# Installs into a temporary DESTDIR and builds examples/c (pkg-config) and
# examples/cpp (CMake) against that tree alone.
test-install:
	tests/install/run.sh

test-python: deps-test build
	@$(TEST_VENV)/bin/python -c 'import sys; print("Python suite: Python", sys.version.split()[0], "of", sys._base_executable, "in", sys.prefix)'
	cd bindings/python && ../../$(TEST_VENV)/bin/python -m pytest -q tests

# The JavaScript package (bindings/js) with Node's test runner: the
# documented vectors, real Redis + Webdis, the Rust library both ways
# (through the Python binding), npm pack and its README's example.
# Node 18 (Debian 12's) has WebCrypto's global only behind a flag, and
# no --test-concurrency (its runner takes one file at a time here anyway).
NODE_MAJOR = $(shell node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)
NODE_ENV_FLAGS = NODE_OPTIONS="$(if $(filter 18 19,$(NODE_MAJOR)),--experimental-global-webcrypto)"
NODE_TEST = node --test $(if $(filter 18 19,$(NODE_MAJOR)),,--test-concurrency=1)
test-js: deps-test build typecheck-js
	cd bindings/js && $(NODE_ENV_FLAGS) $(NODE_TEST) test/*.test.js

# index.d.ts against the package's typed usage (bindings/js/test/types/
# usage.ts: the README's example and every export) with tsc --noEmit;
# TypeScript is a devDependency, installed by npm into bindings/js/
# node_modules when missing (never needed at run time).
typecheck-js: deps-test
	cd bindings/js && { [ -x node_modules/.bin/tsc ] && [ -d node_modules/@types/node ] || \
	  npm install --no-audit --no-fund --no-package-lock --include=dev; } && node_modules/.bin/tsc -p tsconfig.json && \
	  echo "bindings/js: index.d.ts type-checks against test/types/usage.ts"

# The live plan view (web/view) in a headless Chromium, served by
# deploy/nginx-view.conf (TLS, HTTP/2; the drawn stream over its HTTP/1.1
# port) in front of Webdis, following a
# stream the library leads, then 20 streams at once, a page of another
# origin by POST, the JSON tree, a phone screen and map tiles; the front at
# the HTTP level; and the URL make demo prints. Screenshots and latency
# figures: target/js-view/.
test-view: deps-test build
	$(NODE_ENV_FLAGS) $(NODE_TEST) web/test/front.test.js web/test/view.test.js web/test/demo.test.js

# build.rs generates the header into cargo's OUT_DIR; the committed copy
# in include/ must equal it (make header refreshes it).
check-header:
	@generated=$$(scripts/generated-header.sh) && \
	  if diff -u include/missionstream.h "$$generated"; then echo "include/missionstream.h is up to date"; \
	  else echo "include/missionstream.h is stale: run make header and commit it" >&2; exit 1; fi

header:
	@generated=$$(scripts/generated-header.sh) && cp "$$generated" include/missionstream.h && \
	  echo "include/missionstream.h refreshed from $$generated"

# PREFIX (default /usr/local), DESTDIR, LIBDIR, INCLUDEDIR: see scripts/install.sh.
install:
	@scripts/install.sh install

uninstall:
	@scripts/install.sh uninstall

fmt-check:
	$(CARGO) fmt --check

clippy:
	$(CARGO) clippy --release --all-targets -- -D warnings

# The demo's survey plan stays live DEMO_WATCH seconds after its checks,
# one waypoint dragged a second, for the live plan view whose URL it prints.
DEMO_WATCH ?= 60
demo: build
	PYTHON="$(PYTHON)" scripts/demo.sh --watch $(DEMO_WATCH)

demo-ha: build
	PYTHON="$(PYTHON)" scripts/demo-ha.sh

server: build
	@scripts/server.sh start $(RUN_DIR)
	@echo "'. $(RUN_DIR)/env' sets MISSIONSTREAM_URL for the command line and the examples"

server-stop:
	scripts/server.sh stop $(RUN_DIR)

cluster: build
	@scripts/cluster.sh start $(CLUSTER_DIR)
	@echo "'. $(CLUSTER_DIR)/env' sets MS_URLS and MISSIONSTREAM_URL for the command line and the examples"

cluster-stop:
	scripts/cluster.sh stop $(CLUSTER_DIR)

# The run's output is also written to target/bench/ (full.txt, quick.txt):
# the figures of a run are read there, not pasted into the docs.
bench: build
	@mkdir -p target/bench
	@{ $(CARGO) run --release --example bench; echo $$? > target/bench/full.rc; } 2>&1 | tee target/bench/full.txt
	@exit $$(cat target/bench/full.rc)

bench-quick: build
	@mkdir -p target/bench
	@{ $(CARGO) run --release --example bench -- --quick; echo $$? > target/bench/quick.rc; } 2>&1 | tee target/bench/quick.txt
	@exit $$(cat target/bench/quick.rc)

# Rows 9-11 alone (the replicated topology: failover, fan-out over
# replicas, durability; about two minutes): target/bench/ha.txt.
bench-ha: build
	@mkdir -p target/bench
	@{ $(CARGO) run --release --example bench -- --rows 9,10,11; echo $$? > target/bench/ha.rc; } 2>&1 | tee target/bench/ha.txt
	@exit $$(cat target/bench/ha.rc)

# Before/after: the benchmark of BASE (a revision) beside the current
# tree's, interleaved over ROUNDS rounds of ROWS (quick mode); each side
# loads its own lua/. Runs in target/bench-compare/, the comparison in
# target/bench/compare.md. BASE defaults to the commit before the
# publisher became a pure machine.
BASE ?= a22bcba
ROUNDS ?= 5
ROWS ?= 2,3,4
bench-compare: build
	scripts/bench-compare.sh --rounds $(ROUNDS) --rows $(ROWS) $(BASE)

# What a Webdis and its Redis hold per follower and per leader (fds,
# memory, connections) and the client's threads, for N = 100, 300, 1000
# (COUNTS=...); docs/DEPLOYMENT.md, "Sizing: followers per Webdis". Not
# part of make test. Output also in target/bench/fanin.txt.
bench-fanin: deps-test build
	@mkdir -p target/bench
	@{ python3 scripts/bench-fanin.py; echo $$? > target/bench/fanin.rc; } 2>&1 | tee target/bench/fanin.txt
	@exit $$(cat target/bench/fanin.rc)

# Mosquitto and NATS from Debian's packages, installed when missing
# (scripts/install-deps.sh --peers); docs/BENCHMARK.md, "The peers".
bench-peers: build
	scripts/bench-peers.sh

# make test compiles the measurement code of bench-peers (about a second)
# so that it keeps building against the header.
bench-peers-build: deps-test build
	@mkdir -p .run
	scripts/bench-peers.sh --build-only .run/bench-peers

test-under-load:
	PYTHON="$(PYTHON)" scripts/test-under-load.sh

# `make test` runs the same tests with each attack sent once.
MS_ATTACK_SECONDS ?= 10
attack: build
	MS_ATTACK_SECONDS=$(MS_ATTACK_SECONDS) $(CARGO) test --release --test availability --test front -- --nocapture --test-threads=1

# The long soak (tests/soak.rs); `make test` runs its short variant.
# Its table: target/soak/report.md (the short one: report-short.md).
soak: deps
	$(CARGO) test --release --test soak -- --ignored --nocapture
	@echo "make soak: report in $${CARGO_TARGET_DIR:-target}/soak/report.md"

# Mutation testing (slow: each mutation rebuilds the crate); not in `make test`.
mutants: deps-test build
	scripts/mutants.sh $(MUTANTS)

# Mutations nobody here wrote: cargo-mutants on the modules whose unit
# tests need no server (the publisher's and the follower session's pure
# machines, the opening of a subscription, the timing rules, backoff, key
# derivation, the chunked decoder, the reactor's timers), with
# `cargo test --lib`. Report: target/mutants-lib/mutants.out/ (outcomes.json,
# caught.txt, missed.txt); docs/RELIABILITY.md has the last run.
MUTANTS_LIB_FILES ?= src/session/publisher.rs src/session/follower/session.rs \
  src/session/follower/opening.rs src/session/liveness.rs src/session/backoff.rs \
  src/kdf.rs src/util.rs src/error.rs src/net/chunked.rs src/runtime/timers.rs
mutants-lib: deps
	@command -v cargo-mutants >/dev/null 2>&1 || $(CARGO) install cargo-mutants --locked
	$(CARGO) mutants --profile mutants --output target/mutants-lib \
	  $(foreach f,$(MUTANTS_LIB_FILES),-f $(f)) -- --lib

# Every mutation of tests/mutants/mutations.toml still applies to the code
# (its snippet occurs exactly once): cheap, so `make test` keeps the list
# current.
mutants-check:
	$(PYTHON) scripts/mutants.py --check

clean:
	$(CARGO) clean
	rm -rf .run
