# ftclip: `make demo` and `make test` work on a fresh machine (they create .venv first).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# torch 2.14.1 + torchvision 0.29.1 install from the local wheel cache and work with open_clip;
# the torch 2.13.0 CPU build cannot load the torchvision open_clip imports.
TORCH := torch==2.14.1 torchvision==0.29.1

.PHONY: venv demo demo-iqa demo-fewshot test test-slow lint clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

venv: $(VENV)/.installed

demo: venv
	$(VENV)/bin/ftclip fit recipes/demo/reid_synthetic.yaml

demo-iqa: venv
	$(VENV)/bin/ftclip fit recipes/demo/iqa_synthetic.yaml

demo-fewshot: venv
	$(VENV)/bin/ftclip fit recipes/demo/fewshot_synthetic.yaml

test: venv
	$(PY) -m pytest -q -m "not slow"

test-slow: venv
	$(PY) -m pytest -q -m slow

lint: venv
	$(VENV)/bin/lint-imports

clean:
	rm -rf $(VENV) runs exports .pytest_cache
