# mchsm: `make demo` and `make test` are all a newcomer needs (Python >= 3.11, g++, make, perl).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# pytest workers: the machine this is developed and CI'd on has 2 cores
JOBS   ?= 2

.PHONY: all install demo test lint typecheck bench bitstreams waves prove mutants fuzz anomaly formal stability clean

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
	$(BIN)/ruff format --check .
	$(BIN)/python tests/typecheck.py
	$(BIN)/pytest -n $(JOBS) -q

lint: install typecheck
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# mypy over mchsm/, sw/, sim/, boards/, bench/ and tests/ (settings: [tool.mypy] in
# pyproject.toml; its cache in .mypy_cache makes a second run take seconds)
typecheck: install
	$(BIN)/python tests/typecheck.py

# HSM cycles (RTL), bytes on the wire, a TPM 2.0 beside it (if swtpm + tpm2-tools are installed),
# verifier throughput and simulator speed -> bench/results.{json,md}, bench/attest.png
bench: install
	$(BIN)/python -m pip install -q -e ".[dev,bench]"
	$(BIN)/python -m bench.run

# the anomaly detector's full evaluation: every scenario class swept, hundreds of seeded runs
# each, the ROC curve over its threshold -> build/anomaly.txt, build/anomaly.json,
# build/anomaly_roc.png (several minutes on 2 cores; `make test` runs its fixed-seed subset)
anomaly: install
	@mkdir -p build
	$(BIN)/mchsm anomaly-eval --full --roc build/anomaly_roc.png --json-out build/anomaly.json \
	    | tee build/anomaly.txt

# bitstreams for both boards with Yosys and nextpnr from PyPI (YoWASP), each with report.md/json
# in build/<board>/.  About 3 min per board on 2 cores (nextpnr's placement takes most of it and
# can take twice as long on a loaded machine); the first run also compiles the WebAssembly tools
# (a few minutes, cached in ~/.cache/YoWASP).  See docs/boards.md.
bitstreams: install
	$(BIN)/python -m pip install -q -e ".[boards]"
	$(BIN)/mchsm build --board icebreaker --out build/icebreaker
	$(BIN)/mchsm build --board ulx3s --out build/ulx3s

# the iCE40 build's post-synthesis netlist (synth_ice40, Yosys' cell models) runs the scenario
# suite in Verilator over its UART, each answer compared with the model's and the RTL's, and a
# netlist with one LUT bit flipped in the SHA engine must fail (tests/test_netlist.py).  54 min
# measured on 2 shared cores at load 6-11 (the demo story 26 min of it; the synthesis and the
# two Verilator builds, cached by design hash, about 10 min of it)
.PHONY: netlist
netlist: install
	MCHSM_NETLIST=1 $(BIN)/pytest -n $(JOBS) -q tests/test_netlist.py

# the long isolation run: 2,000 interleavings of the manager, honest and hostile tasks on the
# model, each compared access for access on Amaranth's simulator and Verilator (about 20 min)
FUZZ_ARGS ?= --batches 20 --batch 100 --backends amaranth,verilator
fuzz: install
	$(BIN)/python -m mchsm.sim.fuzz $(FUZZ_ARGS)

# ProVerif on every protocol model against proverif/expected.json (needs `proverif` on PATH:
# opam install proverif; see docs/proofs.md)
prove: install
	$(BIN)/mchsm prove

# the single-point mutants of proverif/mutants.json, two ProVerif runs at a time (about a minute):
# each must-catch mutant must be caught or argued, each equivalent one must still prove
mutants: install
	$(BIN)/mchsm prove --mutants --jobs $(JOBS)

# SymbiYosys on every RTL property and every deliberately broken variant (docs/proofs.md, "The
# RTL"): a table of results, counterexamples as VCDs in build/formal/vcd.  60 jobs, JOBS at a
# time, the costliest first; the long ones are the progress runs (PROVISION's is 314 cycles
# deep) and the two-copy HMAC (times in docs/proofs.md, "Results")
formal: install
	$(BIN)/mchsm formal --jobs $(JOBS) --vcd build/formal/vcd

# the core is the circuit the proofs were run on (tests/rtl_equiv.py's REFERENCE): a Yosys equivalence check of three
# configurations (several minutes), then one with a planted flaw, which it must reject
.PHONY: equiv
equiv: install
	$(BIN)/python tests/rtl_equiv.py
	! $(BIN)/python tests/rtl_equiv.py --config 1,2,1 --flaw key_timing
	@echo "equiv: the planted flaw was rejected"

# the pictures in docs/: the demo's first ATTEST and an HMAC of 64 bytes, drawn from
# waveforms of the Amaranth simulator (about a minute)
HMAC_KEY_HEX := 000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f
waves: install
	$(BIN)/mchsm demo --waves build/demo.vcd > /dev/null
	$(BIN)/mchsm waves build/demo.vcd --command ATTEST --out docs/img/attest_waves.png
	$(BIN)/python -c "open('build/m64', 'wb').write(bytes(range(64)))"
	$(BIN)/mchsm hmac --backend amaranth --key-hex $(HMAC_KEY_HEX) --waves build/hmac.vcd build/m64
	$(BIN)/mchsm waves build/hmac.vcd --command HMAC --out docs/img/hmac_waves.png \
	    -s bus__we -s bus__adr -s w_en -s pc -s k -s sha.busy -s sha.rnd -s mailbox.r_done

# make test five times in a row: 1 and 2 workers, shuffled orders (pytest-randomly seeds), file
# order, warm and cold Verilator caches; stops at the first failure (.ci/stability)
stability: install
	./.ci/stability

clean:
	rm -rf $(VENV) build .pytest_cache .ruff_cache .mypy_cache .hypothesis .cache

.PHONY: bench-verifier
# only the verifier's section (SQLite and PostgreSQL, 1k/100k/1M devices, 1 and 2 processes),
# merged into bench/results.{json,md}: a few minutes, no RTL
bench-verifier: install
	$(BIN)/python -m pip install -q -e ".[dev,bench]"
	$(BIN)/python -m bench.run --only verifier

.PHONY: bench-service
# only the verifier service's section: complete attestations/s over HTTP with 1 and 2 workers,
# latency, CPU per attestation, a profile; merged into bench/results.{json,md} (a few minutes)
bench-service: install
	$(BIN)/python -m pip install -q -e ".[dev,bench]"
	$(BIN)/python -m bench.run --only service
