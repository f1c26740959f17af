# Gradient's build, demo and test entry points. `make demo` and `make test`
# install Nix and busybox first when they are missing (.ci/install-deps).

GO ?= go
export PATH := $(PATH):/usr/local/go/bin

.PHONY: all build demo test deps vet bench fuzz

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

include scheduler/bench.mk
