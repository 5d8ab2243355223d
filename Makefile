# metaproxy: Go-native OpenStack instance-metadata proxy on Envoy.
# `make help` lists the targets.

GO        ?= go
BIN       ?= bin
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS   := -s -w -X github.com/metaproxy/metaproxy/pkg/version.Version=$(VERSION)
FUZZTIME  ?= 10s
E2E_FLAGS ?=

.DEFAULT_GOAL := help
SHELL         := bash

# $(call gotest,LOG,ARGS): go test ARGS, its output also in LOG; when it fails, the output of each
# failed test is printed again at the end, where CI's tail of the log shows it.
define gotest
	@mkdir -p $(dir $(1)); set -o pipefail; $(GO) test $(2) 2>&1 | tee $(1) || { rc=$$?; \
	awk -f e2e/scripts/test-failures.awk $(1); echo "go test failed; whole output in $(1)"; exit $$rc; }
endef

.PHONY: help
help: ## Show this help.
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z0-9_-]+:.*## / {printf "  %-12s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

.PHONY: build
build: ## Build cmd/extproc and cmd/xds into ./bin.
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/ ./cmd/extproc ./cmd/xds

.PHONY: run
run: build ## Run cmd/extproc on the embedded demo ports file (no OpenStack needed) on 127.0.0.1:50051.
	$(BIN)/extproc --demo --listen 127.0.0.1:50051 --admin-listen 127.0.0.1:9102

.PHONY: deps
deps: ## Install the Debian packages the tests need (as root; skips what is installed).
	bash e2e/scripts/install-deps.sh

.PHONY: test
test: deps lint test-unit fuzz test-e2e ## Everything CI runs: lint, unit tests (-race), fuzz smoke, e2e on real neutron + nova.

.PHONY: test-unit
test-unit: ## Unit and feature tests with the race detector.
	$(call gotest,$(BIN)/test-unit.log,-race -count=1 ./...)

.PHONY: fuzz
fuzz: ## Run each fuzz target for $(FUZZTIME) (corpus in testdata/fuzz).
	$(GO) test -run '^$$' -fuzz '^FuzzDecodeRequest$$' -fuzztime $(FUZZTIME) ./pkg/request

.PHONY: test-e2e
test-e2e: build ## End-to-end suite on real neutron-server and nova metadata API in network namespaces (root).
	$(call gotest,$(BIN)/test-e2e.log,-tags e2e -count=1 -timeout 35m -v $(E2E_FLAGS) ./e2e/...)

.PHONY: bench
bench: ## Benchmarks side by side with the incumbent on real neutron + nova (root; ~5 min; docs/benchmarks.md).
	bash e2e/scripts/bench.sh

.PHONY: bench-go
bench-go: ## Only the Go benchmarks of the hot paths (no root, no OpenStack).
	$(GO) test -run '^$$' -bench . -benchmem ./pkg/...

.PHONY: lint
lint: ## gofmt, go vet and staticcheck.
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) vet -tags e2e ./e2e/...
	$(GO) run honnef.co/go/tools/cmd/staticcheck@v0.8.2 -tags e2e ./...

.PHONY: fmt
fmt: ## Format the code.
	gofmt -w $$(git ls-files '*.go')

.PHONY: protos
protos: ## Lint the project's own protos with buf (there are none yet; see buf.yaml).
	@echo "no project protos: Envoy's types come from go-control-plane"

.PHONY: check
check: lint test-unit ## Fast pre-commit check: lint + unit tests.

.PHONY: dist
dist: ## Static, versioned release binaries in ./dist.
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o dist/ ./cmd/extproc ./cmd/xds

.PHONY: clean
clean: ## Remove build outputs.
	rm -rf $(BIN) dist
