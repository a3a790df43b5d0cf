# voltguard: every target installs what it needs first (venv, Python packages, Kafka jars).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup demo test test-unit lint format bench bench-recovery bench-ingest bench-ingress bench-billing bench-scoring bench-simulate kafka-up kafka-down clean backtest-real

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

## setup: virtualenv, Python dependencies and the pinned Kafka jars (cached outside the repo)
setup: $(STAMP)
	$(BIN)/python -c "from streams.localkafka import ensure_jars; print('Kafka jars in', ensure_jars())"

## demo: local Kafka up, topics created, ingest and billing workers, simulated fleet traffic, live view
demo: setup
	$(BIN)/voltguard demo

## test: lint, then every test (unit, doctests, integration against a real local broker)
test: setup lint
	$(BIN)/pytest -q

## test-unit: fast loop without the broker
test-unit: setup
	$(BIN)/pytest -q -m "not kafka"

lint: $(STAMP)
	$(BIN)/ruff check --output-format concise .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

## bench: the whole pipeline (ingest, billing, detection, router -> local receiver) as worker processes, 1 then 2 per stage, flat out and paced; figures in bench-pipeline.json
bench: setup
	$(BIN)/python -m streams.bench pipeline --json-out bench-pipeline.json

## bench-recovery: changelog restore time per open session (billing), fitted to a million
bench-recovery: setup
	$(BIN)/python -m streams.bench recovery --json-out bench-recovery.json

## bench-billing: simulator traffic -> ingest -> billing/reconciliation, one worker, vs the bare ceilings
bench-billing: setup
	$(BIN)/python -m streams.bench billing --json-out bench-billing.json

## bench-scoring: online scoring on one core, no broker (us per session, checkpoint size and time)
bench-scoring: setup
	$(BIN)/python -m streams.bench scoring --sessions 5000 --json-out bench-scoring.json

## bench-ingest: OCPP MeterValues -> readings through one worker vs the bare consume ceiling
bench-ingest: setup
	$(BIN)/python -m streams.bench ingest --json-out bench-ingest.json

## bench-ingress: signed Stripe webhooks from a second process -> one ingress process -> Kafka (webhooks/s, p50/p95/p99)
bench-ingress: setup
	$(BIN)/python -m streams.bench_ingress --requests 20000 --concurrency 32 --json-out bench-ingress.json

kafka-up: setup
	$(BIN)/voltguard kafka up

kafka-down: setup
	$(BIN)/voltguard kafka down

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache bench-*.json

## bench-simulate: simulator throughput to JSONL files (20,000 sessions, ~6 M events, ~3.6 GB in a temp dir)
bench-simulate: setup
	d=$$(mktemp -d) && VOLTGUARD_HASH_SECRET=bench $(BIN)/voltguard simulate --sessions 20000 --seed 7 --out $$d --no-progress; rm -rf $$d

## backtest-real: import the public session exports in DATA (one folder per dataset), replay them with the fraud rules, print alert rates and reasons
DATA ?= ../shared/data/real-sessions
backtest-real: setup
	$(BIN)/python -m streams.realcheck $(DATA) --max-alert-rate 0.01
