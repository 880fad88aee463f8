# The README's commands. Both set up whatever is missing (ngspice, .venv, the
# package) and are quick when everything is already there.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
FFEBM := $(VENV)/bin/ffebm
STAMP := $(VENV)/.installed
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# torch first, pinned: this CPU build is on the machine's disk; a looser
# request would pull a multi-GB CUDA build.
TORCH := torch==2.13.0

.PHONY: setup ngspice demo test netlists clean

setup: ngspice $(STAMP)

ngspice:
	@if ! /sbin/ldconfig -p | grep -q 'libngspice\.so' || ! command -v ngspice >/dev/null; then \
		echo "installing ngspice and libngspice0"; \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq ngspice libngspice0 >/dev/null; \
	fi

$(STAMP): setup.cfg pyproject.toml
	@if ! python3 -m venv --help >/dev/null 2>&1; then \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq python3-venv python3-pip >/dev/null; \
	fi
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check $(TORCH)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[test]'
	@touch $@

demo: setup
	@mkdir -p build/demo
	@$(FFEBM) netlist circuits/block_small.toml --seed 0 -o build/demo/block_small.cir
	@echo "== the deck, run by the ngspice program itself (output nodes):"
	@ngspice -b build/demo/block_small.cir 2>&1 | grep -E '^n2_[0-9]+ ' || { echo "ngspice -b failed"; exit 1; }
	@echo "== the same node voltages from the torch reference solver:"
	@$(FFEBM) solve circuits/block_small.toml --backend reference --seed 0 | grep -E ' n2_[0-9]+ '
	@echo "== agreement over 20 random inputs, free and nudged, reference vs ngspice (physical and reduced decks):"
	@$(FFEBM) verify circuits/block_small.toml --samples 20 --nudge

test: setup
	$(PY) -m pytest -q

netlists: setup
	$(PY) -m ffebm_sim.examples

clean:
	rm -rf build .pytest_cache
