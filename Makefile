# The two commands: `make demo` and `make test`. Both install what is missing.
SHELL := /bin/bash
CARGO ?= cargo
CLUSTER_DIR ?= .cluster

.PHONY: all deps build demo test lint fmt clean-cluster

all: build

deps:
	@bash scripts/install-deps.sh

build: deps
	$(CARGO) build --workspace --bins

## Start a 5-node, threshold-3 dev cluster in $(CLUSTER_DIR) and supervise it (Ctrl-C stops it).
demo: build
	./target/debug/signer cluster up --nodes 5 --threshold 3 --dir $(CLUSTER_DIR)

## Lint, then every test (unit, real SoftHSM/swtpm/etcd/PostgreSQL, cluster acceptance).
# `cargo test --workspace` also builds the `signer` binary the cluster tests run
# (one build, one feature set: no separate `cargo build` that would compile twice).
test: deps lint
	$(CARGO) test --workspace --no-fail-fast

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

clean-cluster:
	-./target/debug/signer cluster down --dir $(CLUSTER_DIR)
	rm -rf $(CLUSTER_DIR)
