# Every target installs into .venv first when needed; PIP_CONSTRAINT keeps torch on the
# local CPU wheel (torch==2.13.0): unpinned, pip would pull a CUDA build of several GB.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
export PIP_CONSTRAINT := $(CURDIR)/constraints.txt
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: install train test bench bench-sb3 clean

$(VENV)/.installed: setup.cfg pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(PY) -m pip install -q -e '.[dev]'
	@touch $@

install: $(VENV)/.installed

# make train ARGS="env=cartpole seed=1 run=cp1"
train: install
	$(PY) tools/train.py $(ARGS)

test: install
	$(PY) -m pytest $(ARGS)

bench: install
	$(PY) tools/bench.py env=cartpole $(ARGS)

# The same, next to Stable-Baselines3's PPO with the same settings (installs the bench extra).
bench-sb3: install
	$(PY) -m pip install -q -e '.[bench]'
	$(PY) tools/bench.py env=cartpole --vs-sb3 $(ARGS)

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
