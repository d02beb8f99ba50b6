"""Compute-budget study: step-2 compute each mini-model needs to reach the standard baseline's metric.

    python launchers/study.py --run-experiments --pretrained runs/pipeline/pretrain/final \
        --minipost runs/pipeline/minipost/final --model runs/pipeline/finetune/final \
        --target-data data/bible-ny --out runs/study
    python launchers/study.py --runs full=DIR minijoint=DIR ... --model DIR --out runs/study
    python launchers/study.py --average STUDY_DIR ... --out DIR
    python launchers/study.py --sweep k=1,2,3,4 vocab=8000,32000 ... --out DIR

The code is ds_minimodel/cli/study.py; the same command runs as `python -m ds_minimodel.cli.study`
or `ds-minimodel study` wherever the package is installed.
"""

from ds_minimodel.cli.study import main

if __name__ == "__main__":
    raise SystemExit(main())  # a step that returns an exit status (prepare_data) passes it on
