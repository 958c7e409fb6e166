# Two commands on a fresh Debian 12 machine (as root): `make demo` and `make test`.
# Every target installs what it needs, idempotently.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)
APT_PACKAGES := tgt libiscsi-bin libiscsi-dev etcd-server python3-venv python3-dev build-essential bind9 bind9-utils \
  chromium

.PHONY: setup apt test test-unit demo bench soak soak-chaos soak-cluster lint clean screenshots

setup: apt $(STAMP)

# apt-get only when something is missing: a warm machine pays nothing.
apt:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get update -qq && apt-get install -y -qq $$missing >/dev/null; \
	fi

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[controller,lab,test]'
	# fake-switches pins dependencies too old for Python 3.11: its deps come from the lab extra.
	$(PY) -m pip install -q --no-deps 'fake-switches>=1.5.0'
	@rm -f $(VENV)/.installed-*
	@touch $@

# Lint first: CI runs `make test`, so the layers, types and style are checked there too. The lab
# stories mostly wait on timers: two workers, each with its own lab, keep the whole run short.
test: setup lint
	$(PY) -m pytest -q -p no:cacheprovider -n 2 --dist loadfile tests

test-unit: setup
	$(PY) -m pytest -q -p no:cacheprovider tests/unit tests/golden

demo: setup
	$(PY) -m lab.demo

bench: setup
	$(PY) bench/run.py

# The soaks, longer than `make test` affords. The chaos soak: random faults from the lab's catalogue
# for SOAK_MINUTES, invariants after every round (`make test` runs a 2-minute one); a violation
# prints the seed, the round and its faults to replay. The cluster soak: the leader killed at 60
# seeded random moments of the failover.
SOAK_MINUTES ?= 30
SOAK_SEED ?= 1
soak: soak-chaos soak-cluster

soak-chaos: setup
	$(VENV)/bin/aimctl lab chaos --minutes $(SOAK_MINUTES) --seed $(SOAK_SEED) --out bench/results/soak.json
	$(PY) bench/run.py --table

soak-cluster: setup
	AIMCTL_CLUSTER_TRIALS=60 $(PY) -m pytest -q -p no:cacheprovider tests/e2e/test_cluster.py -k random

# The console pictures the README shows, taken by the browser stories from their lab.
screenshots: setup
	rm -f docs/console/*.png
	AIMCTL_SCREENSHOTS=docs/console $(PY) -m pytest -q -p no:cacheprovider tests/browser

# ruff; mypy --strict on aimctl and lab; the import contracts (layers, slim agent, no cycles) in pyproject.toml.
lint: setup
	$(VENV)/bin/ruff check aimctl lab tests bench
	$(VENV)/bin/mypy aimctl lab
	$(VENV)/bin/lint-imports --no-cache --no-logo

clean:
	rm -rf $(VENV) build *.egg-info
