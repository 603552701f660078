# Two entry points: `make train` (the main job) and `make test`. Both create or update the
# virtual environment first. TORCH pins the CPU build that lies on this machine's disk; on a
# GPU machine use e.g. `make train TORCH=torch` (the package itself only asks for torch>=2.3).
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH ?= torch==2.13.0
ARGS ?=

.PHONY: setup train test test-slow lint clean

setup: $(VENV)/.installed-dev

# the package alone (what `make train` needs: ~10 s less than with the test tools), then the test tools
$(VENV)/.installed: pyproject.toml setup.py
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

train: $(VENV)/.installed
	$(PY) train_joint.py $(ARGS)

test: setup
	$(PY) -m pytest -q $(ARGS)

test-slow: setup  # the checks marked slow (kept out of `make test`)
	$(PY) -m pytest -q -m slow $(ARGS)

lint: setup
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) outputs multirun
