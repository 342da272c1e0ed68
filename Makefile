# The front door: `make run` and `make test` do all the set-up themselves.

BUILD     ?= build
TYPE      ?= RelWithDebInfo
APP       ?= apps/clock
PORT      ?= 8080
JOBS      ?= $(shell nproc 2>/dev/null || echo 2)

# Debian packages the build, the tests and the demo need.
DEPS := build-essential cmake pkg-config libuv1-dev liblua5.4-dev lua5.4 \
        node-llhttp libjansson-dev libcurl4-openssl-dev libhiredis-dev redis-server nginx caddy lua-busted lua-socket lua-dkjson \
        cmd:node=nodejs,npm \
        clang-14 libclang-rt-14-dev llvm-14

# What the end-to-end specs (tests/spec/e2e_*) add: Debian's Chromium, which
# playwright-core drives (no browser is ever downloaded), an emoji font for
# its screenshots, and tests/node's npm packages from package-lock.json.
DEPS_E2E  := chromium fonts-noto-color-emoji
NODE_DIR  := tests/node

# What the benchmarks add: the peers (nginx with nchan and its Lua module,
# Node from DEPS), wrk, and gnuplot for the chart.
DEPS_BENCH := nginx libnginx-mod-nchan libnginx-mod-http-lua wrk gnuplot-nox

PREFIX    ?= /usr/local

.PHONY: all deps deps-e2e build run test e2e test-asan clean fuzz fuzz-build test-fuzz bench install

all: build

deps:
	@scripts/deps.sh $(DEPS)

deps-e2e: deps
	@scripts/deps.sh $(DEPS_E2E)
	@$(MAKE) --no-print-directory $(NODE_DIR)/node_modules/.package-lock.json

# npm ci again whenever the lock file changed since the last install.
$(NODE_DIR)/node_modules/.package-lock.json: $(NODE_DIR)/package-lock.json $(NODE_DIR)/package.json
	cd $(NODE_DIR) && npm ci --no-audit --no-fund --loglevel=error

build:
	@cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=$(TYPE) $(CMAKE_EXTRA) >/dev/null
	@cmake --build $(BUILD) -j $(JOBS)

# Builds, then installs PREFIX/bin/sluice, the Lua library and the demo apps
# under PREFIX/share/sluice (DESTDIR=... stages it, as cmake --install does).
install: CMAKE_EXTRA += -DCMAKE_INSTALL_PREFIX=$(PREFIX)
install: build
	cmake --install $(BUILD) --prefix $(PREFIX)

run: deps build
	$(BUILD)/sluice --port $(PORT) $(APP)

test: deps deps-e2e build
	cd $(BUILD) && ctest --output-on-failure -j $(JOBS)
	@if [ -z "$$SLUICE_SANITIZED" ]; then $(MAKE) --no-print-directory test-fuzz; fi

# sluice and its peers side by side (bench/run.lua): bench/results/latest.json,
# latest.md and latest.png.  QUICK=1 for smaller sizes (about 2 minutes);
# BENCH_ONLY=fanout,route to run some scenarios.
bench: deps build
	@scripts/deps.sh $(DEPS_BENCH)
	@cmake --build $(BUILD) -j $(JOBS) --target sluice-loadgen
	SLUICE_BIN=$(BUILD)/sluice lua5.4 bench/run.lua $(if $(filter 1,$(QUICK)),--quick) \
	  $(if $(BENCH_ONLY),--only $(BENCH_ONLY))

# The end-to-end specs alone: Chromium and the npm clients against the
# demo apps (screenshots in $(BUILD)/screenshots/).
e2e: deps deps-e2e build
	cd $(BUILD) && ctest --output-on-failure -j $(JOBS) -R '^spec/e2e_'

# The whole suite under AddressSanitizer and UndefinedBehaviorSanitizer; a
# small quarantine keeps the memory-bound tests meaningful, and
# LeakSanitizer checks every clean shutdown.
test-asan: deps
	@SLUICE_SANITIZED=1 ASAN_OPTIONS=quarantine_size_mb=16:detect_leaks=1:abort_on_error=0 \
	  UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	  $(MAKE) --no-print-directory test BUILD=build-asan TYPE=Debug CMAKE_EXTRA=-DSLUICE_SANITIZE=ON

# libFuzzer targets (tests/fuzz), built with clang into build-fuzz.
# `make fuzz` runs each for FUZZ_TIME seconds, keeping what it finds in
# build-fuzz/fuzz-corpus (never in the committed tests/fuzz/corpus) and any
# crash in build-fuzz/fuzz-artifacts; `make test` runs each briefly over the
# committed corpus (test-fuzz; not again under test-asan: they are sanitized).
FUZZ_BUILD   := build-fuzz
FUZZ_CC      ?= $(or $(shell command -v clang-14),clang)
FUZZ_TIME    ?= 60
FUZZ_TARGETS := http sse_encode sse_parse json
FUZZ_FLAGS   ?=

fuzz-build: deps
	@cmake -S . -B $(FUZZ_BUILD) -DCMAKE_C_COMPILER=$(FUZZ_CC) -DSLUICE_FUZZ=ON \
	  -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
	@cmake --build $(FUZZ_BUILD) -j $(JOBS) --target fuzzers

test-fuzz: fuzz-build
	cd $(FUZZ_BUILD) && ctest --output-on-failure -j $(JOBS) -L fuzz

fuzz: fuzz-build
	@export ASAN_SYMBOLIZER_PATH=$$(command -v llvm-symbolizer-14 || command -v llvm-symbolizer) \
	  UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1; failed=""; \
	for t in $(FUZZ_TARGETS); do \
	  mkdir -p $(FUZZ_BUILD)/fuzz-corpus/$$t $(FUZZ_BUILD)/fuzz-artifacts/$$t; \
	  echo "fuzz: $$t for $(FUZZ_TIME)s (log: $(FUZZ_BUILD)/fuzz-$$t.log)"; \
	  $(FUZZ_BUILD)/tests/fuzz/fuzz_$$t -max_total_time=$(FUZZ_TIME) -timeout=10 \
	    -print_final_stats=1 -dict=tests/fuzz/$$t.dict \
	    -artifact_prefix=$(FUZZ_BUILD)/fuzz-artifacts/$$t/ $(FUZZ_FLAGS) \
	    $(FUZZ_BUILD)/fuzz-corpus/$$t tests/fuzz/corpus/$$t >$(FUZZ_BUILD)/fuzz-$$t.log 2>&1 \
	    || failed="$$failed $$t"; \
	  grep -E 'INITED +cov|DONE +cov|invariant failed|ERROR: |SUMMARY|Test unit written|stat::(average_exec|number_of)' \
	    $(FUZZ_BUILD)/fuzz-$$t.log | sed 's/^/  /'; \
	done; \
	if [ -n "$$failed" ]; then echo "fuzz: crashes in:$$failed (see $(FUZZ_BUILD)/fuzz-artifacts)"; exit 1; fi; \
	echo "fuzz: no crash"

clean:
	rm -rf build build-asan $(FUZZ_BUILD)
