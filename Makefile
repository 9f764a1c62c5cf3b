# `make demo` and `make test` each set everything up on a fresh machine (a .venv here) and run.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export OMP_NUM_THREADS ?= 2

.PHONY: demo test test-slow test-all lint-imports bench install install-ocr clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first and pinned: the CPU wheel; a looser spec would pull a multi-GB CUDA build.
	$(PY) -m pip install -q "torch==2.13.0"
	$(PY) -m pip install -q -e ".[dev]" "torch==2.13.0"
	$(MAKE) install-ocr
	touch $(STAMP)

# RapidOCR declares the GUI opencv-python; install it without dependencies beside opencv-python-headless.
install-ocr:
	$(PY) -m pip install -q --no-deps "rapidocr-onnxruntime==1.4.4" "pyclipper>=1.3" "shapely>=2"

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m cpfd demo --out runs/demo

# The layer contract in pyproject.toml: a wrong-way import between packages fails the build.
lint-imports: $(STAMP)
	$(VENV)/bin/lint-imports --no-cache

# The fast suite (the default); slow tests (DDP, every codec, a live server, OCR serving) run in test-slow.
test: $(STAMP) lint-imports
	$(PY) -m pytest -q

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

test-all: $(STAMP) lint-imports
	$(PY) -m pytest -q -m "slow or not slow"

bench: $(STAMP)
	$(PY) bench/fashion_mnist.py
	$(PY) bench/tabular.py
	$(PY) bench/speed.py
	$(PY) bench/extraction.py

clean:
	rm -rf $(VENV) runs bench/out
