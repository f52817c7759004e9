# sluice — the front door. `make help` lists the targets.
GO       ?= go
BIN      := bin
PKGS     := ./...
FUZZTIME ?= 20s

.PHONY: help build test test-unit test-privileged generate check-generated fuzz bench demo lint clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

build: ## build bin/sluice and bin/sluice-bench
	$(GO) build -o $(BIN)/sluice ./cmd/sluice
	$(GO) build -o $(BIN)/sluice-bench ./cmd/sluice-bench

test: ## all tests with the race detector (privileged ones skip unless root), then short fuzz runs
	$(GO) vet $(PKGS)
	$(GO) test -race -count=1 -timeout 15m $(PKGS)
	@$(MAKE) --no-print-directory fuzz FUZZTIME=10s

test-unit: ## the tests without the race detector, quick
	$(GO) test -count=1 $(PKGS)

test-privileged: ## only the tests that need root (BPF, network namespaces)
	@[ "$$(id -u)" = 0 ] || { echo "test-privileged needs root"; exit 1; }
	$(GO) test -count=1 ./internal/firewall/... ./internal/e2e/...

generate: ## regenerate the BPF objects and Go bindings (needs clang, llvm, libbpf-dev)
	$(GO) generate ./internal/firewall/

check-generated: ## fail if the committed generated BPF files are stale (needs clang, llvm)
	./scripts/firewall-check-generated.sh

fuzz: ## run each fuzz target for FUZZTIME (see scripts/fuzz.sh)
	@GO=$(GO) FUZZTIME=$(FUZZTIME) ./scripts/fuzz.sh $(PKGS)

bench: build ## side-by-side benchmarks against HAProxy, nginx and io.Copy; writes bench/RESULTS.md
	./bench/run.sh

demo: build ## start three backends and sluice, run a short load through it, print the results
	./scripts/demo.sh

lint: ## gofmt, go vet, staticcheck when installed
	@out=$$(gofmt -l $$(git ls-files '*.go')); [ -z "$$out" ] || { echo "gofmt: $$out"; exit 1; }
	$(GO) vet $(PKGS)
	@if command -v staticcheck >/dev/null; then staticcheck $(PKGS); else echo "staticcheck not installed, skipped"; fi

clean: ## remove built binaries and benchmark scratch output
	rm -rf $(BIN) bench/out
