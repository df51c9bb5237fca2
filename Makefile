# vdiskfs — see README.md. `make demo` and `make test` are the quick start.
SWIFT ?= $(shell command -v swift 2>/dev/null || echo /opt/swift/usr/bin/swift)

.PHONY: all build release test demo deps clean bench

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

clean:
	rm -rf .build
