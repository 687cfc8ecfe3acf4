# Entry points for developers and CI (see docs/local-infra.md).
#
#   make setup       .venv with python3.11, the package with every extra, TF Model Garden
#                    without its dependency list (requirements/model-garden.txt), an
#                    import check of every module, Kafka's jars
#   make test        setup and deploy/'s validators, then the whole test suite (ARGS="tests/platform -x" to narrow)
#   make test-fast   setup, then the tests that need no Kafka broker, no TensorFlow training and no
#                    deploy/ validators (a few minutes; CI runs `make test`)
#   make quickstart  setup, then the whole loop on a small made-up dataset, on the CPU
#   make lint        ruff check and ruff format --check
#   make protos      regenerate preannotate/v1/*_pb2*.py from protos/
#
# setup is quick the second time: pip runs again only when pyproject.toml is
# newer than the venv's stamp, and the jar fetch is skipped when the cache has them.

PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
LINT_PATHS := preannotate services tests scripts bench deploy
ARGS ?=

.PHONY: setup kafka deploy-tools test test-fast quickstart lint protos

setup: $(STAMP) kafka

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml requirements/model-garden.txt | $(BIN)/python
	$(BIN)/python -m pip install -e '.[all,test]'
	$(BIN)/python -m pip install --no-deps -r requirements/model-garden.txt
	$(BIN)/python -m preannotate.importcheck preannotate services
	touch $@

kafka:
	$(PYTHON) scripts/localkafka.py fetch

# The validators of deploy/ (docker compose, kustomize, schemas), built once per machine.
deploy-tools: $(STAMP)
	$(BIN)/python deploy/tools.py fetch

test: setup deploy-tools
	$(BIN)/python -m pytest -q $(ARGS)

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not kafka and not tf and not deploy_tools" $(ARGS)

quickstart: setup
	$(BIN)/preannotate quickstart

lint: $(STAMP)
	$(BIN)/ruff check $(LINT_PATHS)
	$(BIN)/ruff format --check $(LINT_PATHS)

protos: $(STAMP)
	$(BIN)/python scripts/gen_protos.py
