# Baton's entry points. Everything installs what it needs; Go-built binaries are cached in
# $(HOME)/.cache/baton (override with BATON_CACHE).
SHELL := /bin/bash
.DEFAULT_GOAL := help

.PHONY: help test up down crds lint control-plane

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

test: ## Lint and run every test against a real local control plane
	@bash tests/env/test.sh

up: ## Start the local environment (control plane, local node, operator) in the background
	@bash tests/env/up.sh >/dev/null
	@bash tests/env/node.sh
	@bash tests/env/operator.sh

down: ## Stop everything `make up` started
	@bash tests/env/down.sh

crds: ## Regenerate crds/ and the chart's crds/ from the Rust types
	cargo run -q --bin baton -- crds --dir crds
	cargo run -q --bin baton -- crds --dir charts/baton/crds

lint: ## rustfmt, clippy -D warnings, helm lint
	cargo fmt --all --check
	cargo clippy --all-targets --locked -- -D warnings

control-plane: ## Build (or reuse) kube-apiserver, etcd, kube-controller-manager, kubectl, helm
	@bash tests/env/build-control-plane.sh
