# Baton's entry points. Everything installs what it needs; Go-built binaries are cached in
# $(HOME)/.cache/baton (override with BATON_CACHE).
SHELL := /bin/bash
.DEFAULT_GOAL := help

.PHONY: help test crash-test demo demo-postgres demo-mariadb bench bench-scale up down crds lint image krew control-plane

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

test: ## Lint and run every test against a real local control plane
	@bash tests/env/test.sh

crash-test: ## Every enumerated crash point of an upgrade (make test runs a sample): ran, recovered, violations
	@bash tests/env/test.sh crash

demo: ## Start the local environment and upgrade a 3-member Redis 6.2.14 → 7.0.15 under load
	@bash tests/env/demo.sh

demo-postgres: ## The same demo with a 3-member PostgreSQL 16.13 → 16.14 under committing clients
	@bash tests/env/demo.sh postgresql

demo-mariadb: ## The same demo with a 3-member MariaDB 10.11.18 → 10.11.19 under committing clients
	@bash tests/env/demo.sh mariadb

bench: ## N upgrades under load (BATON_BENCH_UPGRADES, default 20; redis-cluster too): write gaps, times, overhead
	@bash tests/env/setup.sh && bash tests/env/up.sh >/dev/null && bash tests/env/node.sh
	cargo build -q --release -p baton --bin baton
	BATON_BIN=$(CURDIR)/target/release/baton KUBECONFIG=$${BATON_CACHE:-$$HOME/.cache/baton}/run/kubeconfig \
	  cargo bench -p baton-e2e --bench upgrade

bench-scale: ## One operator over a fleet (BATON_SCALE_ACTIVE Active + paused up to BATON_SCALE_TOTAL): RSS, CPU, API requests a pass
	@bash tests/env/setup.sh && bash tests/env/up.sh >/dev/null && bash tests/env/node.sh
	cargo build -q --release -p baton --bin baton
	BATON_BIN=$(CURDIR)/target/release/baton BATON_KUBECONFIG=$${BATON_CACHE:-$$HOME/.cache/baton}/run/kubeconfig \
	  cargo bench -p baton-e2e --bench scale

up: ## Start the local environment (control plane, local node, operator) in the background
	@bash tests/env/up.sh >/dev/null
	@bash tests/env/node.sh
	@bash tests/env/operator.sh

down: ## Stop everything `make up` started
	@bash tests/env/down.sh

crds: ## Regenerate crds/ and the chart's crds/ from the Rust types
	cargo run -q -p baton --bin baton -- crds --dir crds
	cargo run -q -p baton --bin baton -- crds --dir charts/baton/crds

lint: ## rustfmt, clippy -D warnings, helm lint
	cargo fmt --all --check
	cargo clippy --workspace --all-targets --locked --features baton/test-hooks -- -D warnings
	@bash tests/env/build-control-plane.sh
	$${BATON_CACHE:-$$HOME/.cache/baton}/bin/helm lint --strict charts/baton

image: ## Build the operator's image from the Dockerfile with buildah (no daemon) and check it
	@bash tests/env/image.sh

krew: ## The kubectl-baton krew archive and manifest (target/krew), validated and installed with krew
	@bash tests/env/krew.sh

control-plane: ## Build (or reuse) kube-apiserver, etcd, kube-controller-manager, kubectl, helm
	@bash tests/env/build-control-plane.sh
