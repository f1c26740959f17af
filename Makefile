# Gradient's build, demo and test entry points. `make demo` and `make test`
# install Nix and busybox first when they are missing (.ci/install-deps).

GO ?= go
export PATH := $(PATH):/usr/local/go/bin

.PHONY: all build demo test deps vet bench bench-cache fuzz

all: build

deps:
	.ci/install-deps

build:
	$(GO) build -o bin/gradient ./cmd/gradient

# Runs a node on docs/examples/hello and leaves it running.
demo: deps build
	docs/examples/demo.sh

# GRADIENT_REQUIRE_NIX makes the tests that need nix fail instead of skip
# when it is missing.
test: deps
	$(GO) vet ./...
	GRADIENT_REQUIRE_NIX=1 $(GO) test -race -count=1 -timeout 20m ./...

bench:
	$(GO) test -run '^$$' -bench . -benchmem ./...

# Measures the binary cache's narinfo requests/s and NAR MB/s next to
# nginx serving the same files, in one run (docs/benchmarks.md). nginx is
# installed when missing and apt-get is available.
bench-cache:
	command -v nginx >/dev/null || test -x /usr/sbin/nginx || apt-get install -y nginx || true
	$(GO) test -run '^$$' -bench BenchmarkCacheHTTP -benchtime 3s -count 1 ./cache/

include scheduler/bench.mk
