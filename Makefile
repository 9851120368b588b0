# Set-up and the two entry points of the README. Everything installs into .venv,
# with torch pinned by constraints.txt to the CPU wheel.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.kansa-installed

.PHONY: audit test setup clean

audit: $(STAMP)
	$(BIN)/kansa run audit/resources/example.toml --out runs/default

test: $(STAMP)
	$(BIN)/python -m pytest

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[test]'
	touch $(STAMP)

clean:
	rm -rf $(VENV) runs .pytest_cache
