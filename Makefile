# mchsm: `make demo` and `make test` are all a newcomer needs (Python >= 3.11, g++, make, perl).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# pytest workers: the machine this is developed and CI'd on has 2 cores
JOBS   ?= 2

.PHONY: all install demo test lint bench bitstreams waves prove clean

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

# HSM cycles (RTL), bytes on the wire, a TPM 2.0 beside it (if swtpm + tpm2-tools are installed),
# verifier throughput and simulator speed -> bench/results.{json,md}, bench/attest.png
bench: install
	$(BIN)/python -m pip install -q -e ".[dev,bench]"
	$(BIN)/python -m bench.run

# bitstreams for both boards with Yosys and nextpnr from PyPI (YoWASP), each with report.md/json
# in build/<board>/.  About 3 min per board on 2 cores (nextpnr's placement takes most of it and
# can take twice as long on a loaded machine); the first run also compiles the WebAssembly tools
# (a few minutes, cached in ~/.cache/YoWASP).  See docs/boards.md.
bitstreams: install
	$(BIN)/python -m pip install -q -e ".[boards]"
	$(BIN)/mchsm build --board icebreaker --out build/icebreaker
	$(BIN)/mchsm build --board ulx3s --out build/ulx3s

# docs/img/attest_waves.png: the demo's first ATTEST, drawn from its waveform (about 40 s)
waves: install
	$(BIN)/mchsm demo --waves build/demo.vcd > /dev/null
	$(BIN)/mchsm waves build/demo.vcd --command ATTEST --out docs/img/attest_waves.png

clean:
	rm -rf $(VENV) build .pytest_cache .ruff_cache .hypothesis .cache
