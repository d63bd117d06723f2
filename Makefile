# Two commands for a fresh machine: `make demo` and `make test`. Everything else is optional.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test test-all bench lint clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[dev,onnx,fast,ray]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/sparsearch run --config configs/quickstart.yaml

test: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow" --durations=15

test-all: $(STAMP)
	$(BIN)/python -m pytest -q --durations=25

bench: $(STAMP)
	$(BIN)/sparsearch bench train
	$(BIN)/sparsearch bench sparsity

lint: $(STAMP)
	$(BIN)/ruff check src tests

clean:
	rm -rf $(VENV) runs bench-results
