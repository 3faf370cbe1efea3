# CXR Review: `make run` starts the app on the demo model, `make test` runs every test.
# Both create .venv on first use and reinstall only when a requirements file changes.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PORT ?= 8501
# Listen on this machine only; set CXR_HOST (e.g. 0.0.0.0) for a deployment behind an HTTPS reverse proxy.
CXR_HOST ?= 127.0.0.1
# Test processes (pytest-xdist; a file's tests stay in one process): browser and server waits overlap
# with computation, so two processes finish the suite sooner even on 2 cores.
TEST_WORKERS ?= 2

.PHONY: run test bench demo-model clean-venv

$(VENV)/.installed: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q -r requirements.txt
	touch $@

$(VENV)/.dev-installed: requirements-dev.txt requirements-scale.txt $(VENV)/.installed
	$(PY) -m pip install --disable-pip-version-check -q -r requirements-dev.txt
	touch $@

run: $(VENV)/.installed
	$(PY) -m streamlit run app.py --server.address $(CXR_HOST) --server.port $(PORT) --server.headless true \
		--browser.gatherUsageStats false

test: $(VENV)/.dev-installed
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile

bench: $(VENV)/.dev-installed
	for f in bench/bench_*.py; do echo "== $$f"; $(PY) $$f || exit 1; done

demo-model: $(VENV)/.installed
	$(PY) -m cxr_core demo-model --source ../shared/data/cxr-real --samples data/samples

clean-venv:
	rm -rf $(VENV)
