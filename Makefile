# caskade developer commands. `make help` lists them.
CARGO ?= cargo

# Where cargo puts release binaries: $CARGO_TARGET_DIR/release when that is
# set, else ./target/release. Every target that runs a binary runs it from
# here (tests/cli/make_targets.rs checks it).
export BIN_DIR ?= $(if $(CARGO_TARGET_DIR),$(CARGO_TARGET_DIR),./target)/release

.PHONY: help build release test dev fmt clippy deps standalone cli zk zk-stop cluster cluster-stop demo-failover bench-standalone bench-engine clean certs

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

build: ## Debug build of the server and the CLI
	$(CARGO) build

release: ## Optimised build of the server and the CLI
	$(CARGO) build --release

deps: ## Install what the tests need (ZooKeeper, redis-server and redis-tools from Debian) if missing
	@scripts/ensure-deps.sh

test: deps ## Install what is missing, then run every test
	$(CARGO) test --workspace --profile ci --no-default-features --features caskade/failpoints 2>&1

fmt: ## Format the code
	$(CARGO) fmt --all

clippy: ## Lint, warnings are errors (release builds, and test builds with failpoints)
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) clippy --workspace --all-targets --features caskade/failpoints -- -D warnings

dev: ## fmt + clippy + test, before every commit
	$(CARGO) fmt --all -- --check
	$(MAKE) clippy
	$(MAKE) test

standalone: ## Build (release) and run one node on 127.0.0.1:7379 (RESP on 6380), data in ./data/standalone
	$(CARGO) build --release --bin caskade-server
	$(BIN_DIR)/caskade-server --config conf/standalone/server.yaml

cli: ## Build (release) and open the REPL against 127.0.0.1:7379
	$(CARGO) build --release -p caskade-cli
	$(BIN_DIR)/caskade-cli -c conf/client/cli.yaml

# The local cluster: ZooKeeper on 127.0.0.1:2181 (data ./data/zk), nodes
# node1..3 from conf/cluster/ (clients 127.0.0.1:7381-7383, replication
# 7481-7483, data and logs in ./data/cluster). See scripts/cluster.sh.
ZK_DIR ?= ./data/zk
ZK_PORT ?= 2181

zk: ## Start ZooKeeper on 127.0.0.1:2181 (Debian's package, installed if missing), data in ./data/zk
	@scripts/ensure-deps.sh
	@scripts/zk.sh start $(ZK_DIR) $(ZK_PORT)

zk-stop: ## Stop the ZooKeeper started by `make zk`
	@scripts/zk.sh stop $(ZK_DIR)

cluster: release zk $(if $(filter-out 0,$(TLS)),certs) ## Build (release), start ZooKeeper and three nodes on 127.0.0.1:7381-7383, show the cluster table (TLS=1: mutual TLS, certificates of `make certs`)
	@TLS=$(TLS) scripts/cluster.sh start

# Development certificates (docs/SECURITY.md): a local CA, node-1..3 (CN =
# node id; server and client use) and a client certificate, in conf/certs
# (gitignored). Made once; `rm -rf conf/certs` to make new ones.
certs: conf/certs/ca.pem ## Create a local CA and certificates for node-1..3 and a client in conf/certs (once)

conf/certs/ca.pem:
	$(CARGO) build --release --bin caskade-certs
	$(BIN_DIR)/caskade-certs --out conf/certs --nodes node-1,node-2,node-3 --clients client

cluster-stop: ## Stop the three nodes one at a time (SIGTERM: controlled shutdown, leadership moved first; SIGKILL after 15 s)
	@scripts/cluster.sh stop
	@$(MAKE) --no-print-directory zk-stop

demo-failover: ## Write with acks=all, SIGKILL a leader, show the election, verify no acknowledged write was lost
	@scripts/demo-failover.sh

BENCH_ADDR ?= 127.0.0.1:7379
bench-standalone: ## Load the running standalone node: ping, set, get; 1 and 50 clients (BENCH_ADDR=...)
	$(CARGO) build --release -p caskade-cli
	@for c in 1 50; do for op in ping set get; do \
	  n=$$([ $$c = 1 ] && echo 20000 || echo 200000); \
	  $(BIN_DIR)/caskade-cli --addr $(BENCH_ADDR) bench --op $$op --clients $$c --requests $$n --value-size 100 --keyspace 100000 || exit 1; \
	done; done

.PHONY: bench-cluster
bench-cluster: ## Standalone vs 3-node cluster (set acks leader/all, get; 50 clients) and failover time; ~7 min
	@scripts/bench-cluster.sh

# Jepsen-style fault scenarios (tests/torture/main.rs, tests/torture/storage_powerloss.rs,
# docs/RELIABILITY.md): one
# line per scenario, non-zero exit on any violation. TORTURE_SECS of faults
# per scenario (make test runs 4 s each); TORTURE_SEED=S replays a schedule.
TORTURE_SECS ?= 10
.PHONY: torture
torture: deps ## Every fault scenario for TORTURE_SECS (10) s each, with history checkers; ~8 min
	TORTURE_SECS=$(TORTURE_SECS) $(CARGO) test --profile ci --no-default-features --features caskade/failpoints --test torture -- --nocapture --test-threads=1 --include-ignored

bench-engine: ## Storage-engine benchmarks vs fjall/sled/redb (ARGS=--quick for a smoke test)
	cd benches/engine && $(CARGO) run --release -- $(ARGS) all

clean: ## Remove build output and local data
	$(CARGO) clean
	rm -rf data
