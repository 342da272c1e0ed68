# The front door: `make run` and `make test` do all the set-up themselves.

BUILD     ?= build
TYPE      ?= RelWithDebInfo
APP       ?= apps/clock
PORT      ?= 8080
JOBS      ?= $(shell nproc 2>/dev/null || echo 2)

# Debian packages the build, the tests and the demo need.
DEPS := build-essential cmake pkg-config libuv1-dev liblua5.4-dev lua5.4 \
        node-llhttp libjansson-dev libcurl4-openssl-dev lua-busted lua-socket lua-dkjson \
        cmd:node=nodejs,npm

.PHONY: all deps build run test test-asan clean

all: build

deps:
	@scripts/deps.sh $(DEPS)

build:
	@cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=$(TYPE) $(CMAKE_EXTRA) >/dev/null
	@cmake --build $(BUILD) -j $(JOBS)

run: deps build
	$(BUILD)/sluice --port $(PORT) $(APP)

test: deps build
	cd $(BUILD) && ctest --output-on-failure -j $(JOBS)

# The whole suite under AddressSanitizer and UndefinedBehaviorSanitizer; a
# small quarantine keeps the memory-bound tests meaningful, and
# LeakSanitizer checks every clean shutdown.
test-asan: deps
	@SLUICE_SANITIZED=1 ASAN_OPTIONS=quarantine_size_mb=16:detect_leaks=1:abort_on_error=0 \
	  UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	  $(MAKE) --no-print-directory test BUILD=build-asan TYPE=Debug CMAKE_EXTRA=-DSLUICE_SANITIZE=ON

clean:
	rm -rf build build-asan
