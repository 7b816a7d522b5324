# Two commands on a fresh machine: `make demo` and `make test` (README).
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# The machine's pip configuration prints one warning per package for a missing local index; hide those lines.
QUIET_PIP := { grep -v "is ignored: it is neither a file nor a directory" || true; }

.PHONY: install demo test bench clean

$(STAMP): pyproject.toml constraints.txt
	@if [ ! -x $(PY) ]; then \
	  if python3 -c "import torch" 2>/dev/null; then \
	    echo "found an existing torch in python3: the venv will see it (--system-site-packages)"; \
	    python3 -m venv --system-site-packages $(VENV); \
	  else python3 -m venv $(VENV); fi; \
	fi
	@# Keep any importable torch (e.g. a CUDA build); otherwise take the pinned CPU-compatible release.
	@$(PY) -c "import torch" 2>/dev/null || ($(PY) -m pip install -q torch==2.13.0 2>&1 | $(QUIET_PIP))
	@$(PY) -m pip install -q -c constraints.txt -e ".[test]" 2>&1 | $(QUIET_PIP)
	@$(PY) -c "import torch, prefect, zarr, av; print('environment ready: torch', torch.__version__)"
	@touch $(STAMP)

install: $(STAMP)

demo: install
	$(VENV)/bin/geo4d demo --workdir demo-out

test: install
	$(PY) -m pytest -q

bench: install
	$(PY) benchmarks/fusion.py
	$(PY) benchmarks/sampling.py
	$(PY) benchmarks/archive.py
	$(PY) benchmarks/training.py

clean:
	rm -rf $(VENV) demo-out
