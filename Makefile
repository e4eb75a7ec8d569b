# Two commands set everything up on a fresh machine (Python 3.11):
#   make repro   install into .venv, then run the whole pipeline (`dvc repro`) on the offline demo
#   make test    install into .venv, then run the test suite (`pytest`)
# and one checks an edit in about a minute (docs/changing-the-code.md):
#   make check   ruff, then every test but the whole-pipeline runs, the tests that start several
#                processes or a browser, and the comparisons of committed outputs (pytest.ini)
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: repro test check lint install

install: $(VENV)/.installed .dvc/plots/offline.html

# reinstall only when requirements.txt changes
$(VENV)/.installed: requirements.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements.txt
	$(BIN)/python -c "import torch, timm, transformers, h5py, dvc, dvclive"
	touch $@

# the page `dvc plots show` fills, vega inline (offline): .dvc/config, plots.html_template
.dvc/plots/offline.html: $(VENV)/.installed cxrfusion/plot_page.py
	$(BIN)/python -m cxrfusion.plot_page $@

repro: install
	PATH="$(CURDIR)/$(BIN):$$PATH" HF_HUB_OFFLINE=1 $(BIN)/dvc repro   # stages call `python`: the venv's
	$(BIN)/python -m cxrfusion.results README.md   # README's results block: this run's table

test: install
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -n 2 --dist loadgroup   # 2 processes (tests/conftest.py: the order and groups)

check: install
	$(BIN)/ruff check .
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -n 2 --dist loadgroup -m "not pipeline and not processes and not committed"

lint: install
	$(BIN)/ruff check .   # pyflakes, pycodestyle, import order; line length 100 (pyproject.toml)
