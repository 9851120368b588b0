# Set-up and the two entry points of the README. Everything installs into .venv,
# with torch pinned by constraints.txt to the CPU wheel.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.kansa-installed

.PHONY: audit test setup browser docs bench-deps clean

audit: $(STAMP)
	$(BIN)/kansa run audit/resources/example.toml --out runs/default

# lint-imports checks the layering contracts in pyproject.toml before the suite runs.
test: $(STAMP) browser
	$(BIN)/lint-imports --no-cache
	$(BIN)/python -m pytest

# The report's browser check needs Debian's chromium (and a Japanese font); install them when absent.
browser:
	@command -v chromium >/dev/null 2>&1 || (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium fonts-ipafont-gothic) >/dev/null 2>&1 \
	  || echo "kansa: chromium could not be installed here; the browser check will be skipped"
	@fc-list 2>/dev/null | grep -qi ipagothic || (DEBIAN_FRONTEND=noninteractive apt-get install -y -q fonts-ipafont-gothic) >/dev/null 2>&1 || true

setup: $(STAMP)

# Independent implementations the attack benchmark compares with (bench/bench_attacks.py); never a dependency of Kansa.
# --no-deps: torchattacks declares torchvision, which cannot load beside the CPU torch, and imports fine without it;
# multiprocess and dill are what ART's own AutoAttack imports when it runs.
bench-deps: $(STAMP)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps torchattacks==3.5.1 foolbox==3.3.4 eagerpy==0.30.0 \
	  gitpython==3.2.1 gitdb==4.0.12 smmap==5.0.3 multiprocess==0.70.19 dill==0.4.1

# Regenerate the generated references between their markers: the config schema in docs/config.md from the
# validator's declarations, the metrics in docs/results-schema.md from the metric registry.
# $(call regenerate,file,marker,flag of kansa list)
regenerate = $(BIN)/python -c "import re, subprocess, pathlib; p = pathlib.Path('$(1)'); \
	gen = subprocess.run(['$(BIN)/kansa', 'list', '$(3)'], capture_output=True, text=True, check=True).stdout; \
	p.write_text(re.sub(r'(?s)(<!-- $(2):start -->\n).*(<!-- $(2):end -->)', lambda m: m.group(1) + gen + m.group(2), p.read_text()))"

docs: $(STAMP)
	$(call regenerate,docs/config.md,schema,--schema)
	$(call regenerate,docs/results-schema.md,metrics,--metrics)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[test,ray,onnx,trees,mlflow]'
	touch $(STAMP)

clean:
	rm -rf $(VENV) runs .pytest_cache
