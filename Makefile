# One entry for users and CI. `make demo` and `make test` create .venv when missing and install
# into it once; the stamp file makes a second install a no-op.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
SYMTUNE_DATA_DIR ?= $(wildcard $(abspath ../shared/data))
export SYMTUNE_DATA_DIR

.PHONY: install demo test test-all bench clean

$(STAMP): setup.py constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade "pip>=24"
	$(PY) -m pip install -q -c constraints.txt -e '.[hf,dev,aot]'
	$(PY) -m pip install -q --no-deps t5==0.9.4
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(VENV)/bin/symtune demo --run_dir=runs/demo
	$(VENV)/bin/tart eval --synthetic 500 --run_dir=runs/demo/tart

test: install
	$(PY) -m pytest -q

test-all: install
	$(PY) -m pytest -q -m ""

clean:
	rm -rf $(VENV) *.egg-info
