# Two commands for a newcomer: `make demo` and `make test`. Both build .venv when missing.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: demo test lint docs bench clean

$(STAMP): pyproject.toml
	# a real browser for the GAS web front end's tests (Debian's chromium + chromium-driver)
	command -v chromedriver >/dev/null || (command -v apt-get >/dev/null && \
		(apt-get install -y -q chromium chromium-driver >/dev/null || \
		 (apt-get update -q >/dev/null && apt-get install -y -q chromium chromium-driver >/dev/null))) || \
		echo "warning: chromium/chromedriver not installed; the browser tests will fail under CI"
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,aws,postgres,web,otel]'
	touch $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check orchestrator examples tests bench
	$(BIN)/mypy orchestrator

test: lint docs
	$(BIN)/python -m pytest

docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

demo: $(STAMP)
	$(BIN)/python -m examples.gas --log-level warning demo

# the code before the unit of work: bench/versus.py measures PostgreSQL against it in the same run
BASELINE ?= 04b95ba

bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	$(BIN)/python bench/embedded.py --jobs 4000 --rounds 5 --out bench/RESULTS.md
	$(BIN)/python bench/stages.py --jobs 8000 --rounds 3 --out bench/RESULTS.md --append
	$(BIN)/python bench/scaling.py --out bench/RESULTS.md --append
	$(BIN)/python bench/recovery.py --out bench/RESULTS.md --append
	$(BIN)/python bench/postgres.py --jobs 1500 --rounds 3 --out bench/RESULTS.md --append
	$(BIN)/python bench/versus.py $(BASELINE) --suite postgres --rounds 5 --out bench/RESULTS.md --append
	$(BIN)/python bench/sqs_vs_handwritten.py --jobs 100 --repeat 3 --out bench/RESULTS.md
	$(BIN)/python bench/dynamodb_ops.py --out bench/RESULTS.md
	$(BIN)/python bench/time_features.py --out bench/RESULTS.md --append
	$(BIN)/python bench/job_size.py --out bench/RESULTS.md --append
	$(BIN)/python bench/row_cost.py --out bench/RESULTS.md --append
	$(BIN)/python bench/submit.py --jobs 5000 --singles 1000 --rounds 3 --out bench/RESULTS.md --append
	$(BIN)/python bench/latency.py --jobs 500 --rate 50 --rounds 3 --out bench/RESULTS.md --append
	$(BIN)/python bench/targets.py

clean:
	rm -rf $(VENV) demo-data gas-data .pytest_cache .mypy_cache .ruff_cache
