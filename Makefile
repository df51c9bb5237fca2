# vdiskfs — see README.md. `make demo` and `make test` are the quick start.
SWIFT ?= $(shell command -v swift 2>/dev/null || echo /opt/swift/usr/bin/swift)

.PHONY: all build release test demo deps clean bench fuzz

all: build

deps:
	sh scripts/install-deps.sh

build: deps
	$(SWIFT) build

release: deps
	$(SWIFT) build -c release --product vdiskfs

# The whole test suite: unit tests, CLI integration tests, real FUSE mounts.
test: deps
	$(SWIFT) build --build-tests
	$(SWIFT) test --skip-build

demo:
	sh scripts/demo.sh

bench: release
	sh bench/run.sh

# libFuzzer targets for the store's parsers (fuzz/: a separate package, which `build` and
# `test` never build; see fuzz/README.md). Builds them into .build-fuzz, reports the
# regression inputs that still crash, then runs each target for FUZZ_SECONDS (default 60),
# skipping inputs that hit bugs already reported; fails when a target crashed.
FUZZ_SECONDS ?= 60
fuzz: deps
	SWIFT=$(SWIFT) sh fuzz/build.sh
	sh fuzz/regress.sh || true
	sh fuzz/run.sh -k -t $(FUZZ_SECONDS)

clean:
	rm -rf .build
