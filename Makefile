# mchsm: `make demo` and `make test` are all a newcomer needs (Python >= 3.11, g++, make, perl).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# pytest workers: the machine this is developed and CI'd on has 2 cores
JOBS   ?= 2

.PHONY: all install demo test lint bench bitstreams prove clean

all: test

$(VENV)/.installed: pyproject.toml
	@echo "== creating $(VENV) and installing mchsm (first run only) =="
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[dev]"
	@touch $@

install: $(VENV)/.installed

demo: install
	$(BIN)/mchsm demo

test: install
	$(BIN)/ruff check .
	$(BIN)/pytest -n $(JOBS) -q

lint: install
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) build .pytest_cache .ruff_cache .hypothesis .cache
