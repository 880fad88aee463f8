# The README's commands. Both set up whatever is missing (ngspice, gnucap, .venv, the
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

.PHONY: setup ngspice gnucap compiler demo test netlists clean

setup: ngspice gnucap compiler $(STAMP)

ngspice:
	@if ! /sbin/ldconfig -p | grep -q 'libngspice\.so' || ! command -v ngspice >/dev/null; then \
		echo "installing ngspice and libngspice0"; \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq ngspice libngspice0 >/dev/null; \
	fi

# gnucap: the second, independent simulator the tests check the spice3 decks with.
gnucap:
	@if ! command -v gnucap >/dev/null; then \
		echo "installing gnucap"; \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq gnucap >/dev/null; \
	fi

# a C compiler and the Python headers: the ngspice path's EXTERNAL-source callback is built with
# cffi on first use (ffebm_sim/backends/extsrc.py; without them it falls back to PWL sources)
compiler:
	@if ! command -v cc >/dev/null || \
	    ! test -f "$$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["include"])')/Python.h"; then \
		echo "installing gcc and the Python headers"; \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq gcc python3-dev >/dev/null; \
	fi

$(STAMP): setup.cfg pyproject.toml
	@if ! python3 -m venv --help >/dev/null 2>&1; then \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq python3-venv python3-pip >/dev/null; \
	fi
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check $(TORCH)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[test]'
	@touch $@

# The main job: train the digits ff-EBM with ngspice in the loop (EP through the
# SPICE blocks, backprop through the digital ones); it prints the analog and digital
# parameter counts first. Several minutes on 2 cores (README: measured times).
DEMO_RUN := build/demo_digits
demo: setup
	@rm -rf $(DEMO_RUN)
	@$(FFEBM) train circuits/digits_ffebm.toml --data digits --backend ngspice --out $(DEMO_RUN)
	@echo "run directory: $(DEMO_RUN) (metrics.csv, summary.json, checkpoints/, learning_curves.png)"
	@echo "a trained block as a SPICE deck: $(FFEBM) netlist circuits/digits_ffebm.toml --block 1 --checkpoint $(DEMO_RUN)/checkpoints/epoch_0020.pt -o block1.cir"

test: setup
	$(PY) -m pytest -q

netlists: setup
	$(PY) -m ffebm_sim.examples

clean:
	rm -rf build .pytest_cache
