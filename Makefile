# The README's two commands: `make demo` (set up + run the main job) and `make test`.
# Both install into .venv with constraints.txt, which pins the CPU build of torch.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/pip install --quiet --disable-pip-version-check -c constraints.txt

.PHONY: demo test

demo: $(VENV)/.core-installed
	$(BIN)/refground demo

# ruff check is the lint (the tree is not kept in `ruff format` style, so no format check).
# pytest runs in TEST_WORKERS processes (pytest-xdist; CI has two cores), a test module's tests
# in one process so module fixtures are built once; -rs: every skip prints its reason.
TEST_WORKERS ?= 2
test: $(VENV)/.dev-installed
	$(BIN)/ruff check .
	$(BIN)/pytest -q -rs -n $(TEST_WORKERS) --dist loadscope

$(VENV)/.core-installed: pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) -e ".[clip]"
	touch $@

$(VENV)/.dev-installed: pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) -e ".[dev]"
	touch $@
