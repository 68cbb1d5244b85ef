# caskade developer commands. `make help` lists them.
CARGO ?= cargo

.PHONY: help build release test dev fmt clippy deps standalone cli bench clean bench-engine

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

build: ## Debug build of the server and the CLI
	$(CARGO) build

release: ## Optimised build of the server and the CLI
	$(CARGO) build --release

deps: ## Install what the tests need (ZooKeeper from Debian) if missing
	@scripts/ensure-deps.sh

test: deps ## Install what is missing, then run every test
	$(CARGO) test --workspace --release --features caskade/failpoints 2>&1

fmt: ## Format the code
	$(CARGO) fmt --all

clippy: ## Lint, warnings are errors
	$(CARGO) clippy --workspace --all-targets --features caskade/failpoints -- -D warnings

dev: ## fmt + clippy + test, before every commit
	$(CARGO) fmt --all -- --check
	$(MAKE) clippy
	$(MAKE) test

bench-engine: ## Storage-engine benchmarks vs fjall/sled/redb (ARGS=--quick for a smoke test)
	cd benches/engine && $(CARGO) run --release -- $(ARGS) all

clean: ## Remove build output and local data
	$(CARGO) clean
	rm -rf data
