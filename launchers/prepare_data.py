"""Text -> tokenizer -> packed token shards (a dataset directory for training).

    python launchers/prepare_data.py --recipe bible-en --out data/bible-en --vocab-size 8000
    python launchers/prepare_data.py --recipe bible-ny --out data/bible-ny --vocab-size 8000
    python launchers/prepare_data.py --text a.txt b.txt --out data/mine --tokenizer data/bible-en/tokenizer.model
    python launchers/prepare_data.py --hf-dataset saved_ds/ --text-column text --out data/hf --vocab-size 16000

The code is ds_minimodel/cli/prepare_data.py; the same command runs as `python -m ds_minimodel.cli.prepare_data`
or `ds-minimodel prepare_data` wherever the package is installed.
"""

from ds_minimodel.cli.prepare_data import main

if __name__ == "__main__":
    raise SystemExit(main())  # a step that returns an exit status (prepare_data) passes it on
