# The two commands a newcomer needs:  `make run`  (whole system, embedded)  and  `make test`.
# Everything else here is what those two call.

SHELL := /bin/bash
.DEFAULT_GOAL := help

# uv comes from PATH, or is installed once into .tools/ from PyPI.
UV := $(shell command -v uv 2>/dev/null || echo $(CURDIR)/.tools/bin/uv)
PY := $(UV) run --frozen
GEN_OUT := libs/contracts/src
PROTOS := $(shell find protos/crm -name '*.proto' | sort)

.PHONY: help bootstrap gen gen-check lint test test-fast run bench k8s-check clean

help:
	@echo "make run        run the whole CRM locally (embedded PostgreSQL + NATS, gateway on :8000)"
	@echo "make test       run every check and the whole test suite (what CI runs)"
	@echo "make bench      run the benchmarks and print their ratios"
	@echo "make gen        regenerate Python code from protos/"

$(CURDIR)/.tools/bin/uv:
	python3 -m venv .tools
	.tools/bin/pip install --quiet 'uv==0.13.9'

# Install the locked environment (idempotent; a no-op when up to date).
bootstrap: $(UV)
	$(UV) sync --frozen --all-packages --quiet

gen: bootstrap
	rm -rf $(GEN_OUT)/crm && mkdir -p $(GEN_OUT)
	$(PY) python -m grpc_tools.protoc -Iprotos \
		--python_out=$(GEN_OUT) --grpc_python_out=$(GEN_OUT) \
		--mypy_out=$(GEN_OUT) --mypy_grpc_out=$(GEN_OUT) $(PROTOS)
	$(PY) python -m grpc_tools.protoc -Iprotos --include_source_info \
		--descriptor_set_out=$(GEN_OUT)/crm/contracts.binpb $(PROTOS)
	find $(GEN_OUT)/crm -type d -exec touch {}/__init__.py \;

# Fails when the committed generated code is not what `make gen` makes from protos/.
gen-check: gen
	@git diff --exit-code --stat -- $(GEN_OUT) || (echo "generated code is stale: run 'make gen' and commit" && exit 1)
	@test -z "$$(git status --porcelain --untracked-files=all -- $(GEN_OUT))" || (echo "generated files are not committed: run 'make gen' and commit" && exit 1)

lint: bootstrap
	$(PY) buf lint protos
	$(PY) python tools/buf_breaking.py
	$(PY) ruff check .

k8s-check: bootstrap
	$(PY) python deploy/check.py

test: gen-check lint k8s-check
	$(PY) pytest

# The tests without the static checks, for a quick loop while coding.
test-fast: bootstrap
	$(PY) pytest -x -q

run: bootstrap
	$(PY) crm-dev

bench: bootstrap
	$(PY) python -m tests.bench $(BENCH)

clean:
	rm -rf .venv .tools .crm-data
