# Two commands do all set-up on a fresh machine:
#   make demo   create .venv, install, run the quickstart (pretrain + probe + fine-tune on generated data)
#   make test   create .venv, install, run the test suite
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test install demos bench clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/domainfm demo --out demo_out

demos: $(STAMP)
	for d in synthetic medical remote_sensing pathology; do $(VENV)/bin/domainfm demo --domain $$d --out demos_out/$$d || exit 1; done

test: $(STAMP)
	$(VENV)/bin/pytest -q

bench: $(STAMP)
	for b in benchmarks/*.py; do $(PY) $$b --quick || exit 1; done

clean:
	rm -rf demo_out demos_out runs .pytest_cache
