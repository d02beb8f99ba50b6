"""Export to Hugging Face (launchers/export.py): the adapted masked LM and the plugged-in classifier,
for the RoBERTa/XLM-R and the BERT family, loaded in a fresh Python process with plain transformers
and compared with our own models; the tokenizer.json against sentencepiece; the refusals.

The references are our modules, built the way the pipeline builds them: an MLMEncoder with the
pack's tensors plugged into the pretrained state (surgery.plug_embeddings), and step 4's plugged
classifier (steps/transfer.plugged_model). Token ids are our tokenizer's, framed as tasks.batching
frames them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import sentencepiece as spm
import torch
import transformers

from ds_minimodel.artefacts.hf_tokenizer import backend_tokenizer, write_hf_tokenizer
from ds_minimodel.artefacts.langpack import load_pack
from ds_minimodel.artefacts.modeldir import read_model_dir
from ds_minimodel.artefacts.surgery import plug_embeddings
from ds_minimodel.data.bibles import chichewa_verses
from ds_minimodel.model import MLMEncoder
from ds_minimodel.steps.finetune.common import load_classifier
from ds_minimodel.steps.transfer import plugged_model
from ds_minimodel.tasks.batching import build_pair, pad_sequences
from ds_minimodel.tokenizers import load_tokenizer
from ds_minimodel.tokenizers.base import Tokenizer
from ds_minimodel.tokenizers.layout import BERT, ROBERTA, Layout
from ds_minimodel.tokenizers.sentencepiece import train_tokenizer
from launchers.export import main as export_main
from tests.helpers import (
    assert_close_fp32,
    expect_rejected,
    expect_rejected_cli,
    hf_config,
    randomise,
    run_step,
)

transformers.logging.set_verbosity_error()

VERSES = chichewa_verses()
NY = [VERSES[k] for k in sorted(VERSES)]


# ---- The tokenizer alone: sentencepiece's ids, through AutoTokenizer ---------------------------

TRICKY = ["  leading,  double   and trailing spaces  ", "tab\tand\nnewline", "Yesu anati: “Inu!”", "ñ é ü Ä ﬁ ①",
          "日本 🙂🙂 x", "▁odd start", "mid▁dle", "digits 12345 67.8", "", " ", "ＦＵＬＬ width", "x\u3000y"]


@pytest.mark.parametrize("model_type,layout", [("unigram", ROBERTA), ("bpe", BERT),
                                               ("unigram", Layout("bert", segment_ids=False)),
                                               ("tokenizer.json", ROBERTA)])
def test_tokenizer_json_gives_sentencepiece_ids(tiny_target_corpus, tmp_path, model_type, layout):
    """tiny_target_corpus's tokenizer (unigram, xlmr layout), a BPE one in BERT's layout, and a
    pack tokenizer that is a tokenizer.json already (prepare_data.py --tokenizer)."""
    root = tiny_target_corpus.parent
    if model_type == "bpe":
        tok = train_tokenizer([str(root / "corpus.txt")], str(tmp_path / "spm"), 300, model_type="bpe", layout="bert")
    else:
        tok = load_tokenizer(str(root / "spm.model"))
    if model_type == "tokenizer.json":  # any tokenizer.json with the five special pieces
        spm_as_json = tmp_path / "tokenizer.json"
        backend_tokenizer(tok, BERT).save(str(spm_as_json))  # its frame is replaced by the export's
        tok = load_tokenizer(str(spm_as_json))
    out = tmp_path / "hf"
    out.mkdir()
    write_hf_tokenizer(tok, out, layout, model_max_length=512)
    hf = transformers.AutoTokenizer.from_pretrained(str(out))
    assert hf.mask_token_id == tok.mask_id and hf.pad_token_id == tok.pad_id and len(hf) == tok.vocab_size

    # Every Chichewa verse (and odd whitespace, unknown characters, a literal "▁"): <s> ids </s>.
    texts = NY[::4] + TRICKY
    ours = [[tok.bos_id] + ids + [tok.eos_id] for ids in tok.encode_batch(texts)]
    theirs = hf(texts)["input_ids"]
    differ = [i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b]
    if model_type != "unigram":
        assert not differ, [texts[i] for i in differ[:3]]
    else:
        # Unigram: sentencepiece's Viterbi adds float32 scores from the start of the text, so where
        # two segmentations of a word score exactly the same its pick depends on where the word
        # stands; tokenizers (float64, word by word) always picks one. Only such exact ties may
        # differ (a 180-piece vocabulary has a few, e.g. "ulu l u" / "u l ulu"; the 8k one of
        # `make pipeline` none on the whole Chichewa Bible).
        sp = spm.SentencePieceProcessor(model_file=tok.path)

        def score(ids):  # float64 sums of the float32 piece scores
            return sum(sp.get_score(i) for i in ids)

        assert len(differ) <= len(texts) // 200, len(differ)
        for i in differ:
            assert score(ours[i]) == score(theirs[i]), (texts[i], [tok.piece(j) for j in ours[i]],
                                                         hf.convert_ids_to_tokens(theirs[i]))
    # Pairs are framed (and typed) as tasks.batching frames them for the model family.
    a, b = tok.encode_batch(NY[:2])
    row, n_a = build_pair(tok, a, b, 10_000, layout)
    pair = hf(NY[0], NY[1])
    assert pair["input_ids"] == row
    if layout.segment_ids:
        assert pair["token_type_ids"] == [0] * n_a + [1] * (len(row) - n_a)
    else:
        assert "token_type_ids" not in pair
    # "<mask>" stands for a whole word-initial piece (what masked-LM training masked).
    masked = hf("Ndipo <mask> anati")["input_ids"]
    assert masked == [tok.bos_id] + tok.encode("Ndipo") + [tok.mask_id] + tok.encode("anati") + [tok.eos_id]
    assert hf.decode(theirs[0], skip_special_tokens=True) == tok.decode(ours[0])


# ---- Both families, end to end ----------------------------------------------------------------

def _finetune_and_adapt(work: Path, body: Path, target_data: Path, through: str) -> dict:
    ft, adapt = work / "ft", work / "adapt"
    run_step("finetune", "tests/fixtures/finetune-tiny.yaml", f"finetune.model_dir={body}", f"train.out_dir={ft}")
    run_step("adapt", "tests/fixtures/adapt-tiny.yaml", f"adapt.model_dir={body}", f"data.path={target_data}",
             f"train.out_dir={adapt}", f"adapt.through={through}", "adapt.language=ny")
    return {"body": body, "finetuned": ft / "final", "pack": adapt / "pack"}


def _bert_target_data(root: Path, lines: list[str]) -> Path:
    """The tiny Chichewa dataset again, with a BERT-layout tokenizer (<pad> = 0)."""
    from ds_minimodel.data.shards import write_shards

    root.mkdir()
    (root / "corpus.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    tok = train_tokenizer([str(root / "corpus.txt")], str(root / "spm"), 180, layout="bert")
    docs = [tok.encode(line) for line in lines]
    write_shards(str(root / "data"), {"train": docs[:2700], "valid": docs[2700:]}, str(root / "spm.model"),
                 {"recipe": "test-ny-bert"})
    return root / "data"


@pytest.fixture(scope="module")
def families(tiny_model_dir, tiny_corpus, tiny_target_corpus, tmp_path_factory) -> dict:
    """Per family: a pretrained body with an MLM head, a classifier fine-tuned from it, a pack.

    roberta: our tiny MiniJoint model (xlmr layout), adapted through its mini-model.
    bert: a random BertForMaskedLM directory with an English sentencepiece vocabulary in BERT's
    layout, adapted through the full model."""
    out = {"roberta": _finetune_and_adapt(tmp_path_factory.mktemp("roberta"), tiny_model_dir, tiny_target_corpus,
                                          "mini")}
    root = tmp_path_factory.mktemp("bert")
    en = train_tokenizer([str(tiny_corpus.parent / "corpus.txt")], str(root / "en"), 200, layout="bert")
    body = root / "body"
    torch.manual_seed(0)
    model = randomise(transformers.BertForMaskedLM(hf_config("bert", vocab_size=en.vocab_size)), seed=0)
    model.save_pretrained(str(body))
    shutil.copy(en.path, body / "tokenizer.model")
    ny = [VERSES[k] for k in sorted(VERSES)[:3000]]
    out["bert"] = _finetune_and_adapt(root, body, _bert_target_data(root / "ny", ny), "full")
    return out


# Runs in a fresh interpreter, outside the repository: plain transformers, nothing of ours.
LOAD = textwrap.dedent("""
    import json, sys, torch, transformers
    from transformers import AutoModelForMaskedLM, AutoModelForSequenceClassification, AutoTokenizer, pipeline
    mlm_dir, clf_dir, request, result = sys.argv[1:]
    req = json.load(open(request))
    out = {}
    tok = AutoTokenizer.from_pretrained(mlm_dir)
    mlm, info = AutoModelForMaskedLM.from_pretrained(mlm_dir, output_loading_info=True)
    out["mlm_loading"] = {k: sorted(map(str, v)) for k, v in info.items()}
    enc = tok(req["texts"], padding=True, return_tensors="pt")
    out["enc"] = dict(enc)
    with torch.no_grad():
        out["mlm_logits"] = mlm(**enc).logits
    out["masked_ids"] = [tok(t)["input_ids"] for t in req["masked"]]
    fill = pipeline("fill-mask", model=mlm_dir)
    out["fill"] = [fill(t, top_k=1)[0] for t in req["masked"]]
    ctok = AutoTokenizer.from_pretrained(clf_dir)
    clf, info = AutoModelForSequenceClassification.from_pretrained(clf_dir, output_loading_info=True)
    out["clf_loading"] = {k: sorted(map(str, v)) for k, v in info.items()}
    cenc = ctok(req["texts"], padding=True, return_tensors="pt")
    out["clf_enc"] = dict(cenc)
    with torch.no_grad():
        out["clf_logits"] = clf(**cenc).logits
    out["id2label"] = clf.config.id2label
    out["classes"] = [type(x).__name__ for x in (tok, mlm, clf)]
    torch.save(out, result)
""")


def _load_elsewhere(mlm: Path, clf: Path, request: dict, work: Path) -> dict:
    (work / "request.json").write_text(json.dumps(request), encoding="utf-8")
    (work / "load.py").write_text(LOAD, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "load.py", str(mlm), str(clf), "request.json", "result.pt"], cwd=work,
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return torch.load(work / "result.pt", weights_only=False)


def _short_verses(tok: Tokenizer, n: int, limit: int) -> list[str]:
    """n Chichewa verses (none of the adaptation corpus) of at least three words and at most
    `limit` pieces (they fit every tiny model's positions)."""
    picked = [v for v in NY[20000:] if len(v.split()) >= 3 and len(tok.encode(v)) <= limit]
    return picked[:n]


def _masked(text: str) -> tuple[str, str, str]:
    words = text.split()
    j = len(words) // 2
    return " ".join(words[:j]), words[j], " ".join(words[j + 1:])


@pytest.mark.parametrize("family", ["roberta", "bert"])
def test_export_loads_in_plain_transformers_and_matches_ours(families, family, tmp_path):
    run = families[family]
    mlm_dir, clf_dir = tmp_path / "mlm", tmp_path / "clf"
    export_main(["mlm", "--model", str(run["body"]), "--pack", str(run["pack"]), "--out", str(mlm_dir)])
    export_main(["classifier", "--model", str(run["finetuned"]), "--pack", str(run["pack"]), "--out", str(clf_dir)])

    info, tensors, tok = load_pack(run["pack"])
    texts = _short_verses(tok, 6, 30)
    masked = [_masked(t) for t in texts[:3]]
    got = _load_elsewhere(mlm_dir, clf_dir, {"texts": texts, "masked": [f"{a} <mask> {c}" for a, _, c in masked]},
                          tmp_path)
    want_classes = {"roberta": ["XLMRobertaForMaskedLM", "XLMRobertaForSequenceClassification"],
                    "bert": ["BertForMaskedLM", "BertForSequenceClassification"]}[family]
    assert got["classes"][1:] == want_classes
    for loading in (got["mlm_loading"], got["clf_loading"]):  # every tensor from the file, none left over
        assert not any(loading.get(k) for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), loading

    # Token ids: exactly ours, framed and padded as our pipeline does.
    ids, mask = pad_sequences([[tok.bos_id] + tok.encode(t) + [tok.eos_id] for t in texts], tok.pad_id)
    for enc in (got["enc"], got["clf_enc"]):
        assert torch.equal(enc["input_ids"], ids) and torch.equal(enc["attention_mask"], mask)
        if family == "bert":
            assert torch.equal(enc["token_type_ids"], torch.zeros_like(ids))
        else:
            assert "token_type_ids" not in enc

    # The masked LM: our MLMEncoder with the pack plugged into the pretrained state.
    state, cfg, _ = read_model_dir(run["body"])
    plugged, plugged_cfg = plug_embeddings(state, cfg, tensors["word"], tensors["output_bias"], info.pad_token_id)
    ours = MLMEncoder(plugged_cfg).eval()
    ours.load_state_dict(plugged, strict=True)
    tol = dict(depth=cfg.num_layers + 2, reduction=max(cfg.hidden_size, cfg.intermediate_size, ids.shape[1]))
    with torch.no_grad():
        logits = ours(ids, attention_mask=mask)["logits"]
    real = mask.bool()
    assert_close_fp32(got["mlm_logits"][real], logits[real], **tol, what=f"{family} MLM logits")

    # fill-mask: the pipeline's top token is our argmax at the masked position.
    for (before, _, after), hf_ids, fill in zip(masked, got["masked_ids"], got["fill"]):
        row = [tok.bos_id] + tok.encode(before) + [tok.mask_id] + tok.encode(after) + [tok.eos_id]
        assert hf_ids == row
        at = row.index(tok.mask_id)
        with torch.no_grad():
            probs = ours(torch.tensor([row]))["logits"][0, at].softmax(-1)
        top2 = probs.topk(2)
        assert top2.values[0] - top2.values[1] > 1e-4, "too close to call: pick another word"
        assert fill["token"] == int(top2.indices[0]), (fill, tok.piece(int(top2.indices[0])))
        assert_close_fp32(torch.tensor(fill["score"]), top2.values[0], **{**tol, "depth": tol["depth"] + 1},
                          what=f"{family} fill-mask score")

    # The classifier: step 4's plugged model, on the same ids.
    model, config, lineage = load_classifier(run["finetuned"])
    plugged_clf = plugged_model(model, info, tensors, lineage, str(run["finetuned"]))
    batch = {"input_ids": ids, "attention_mask": mask}
    if family == "bert":
        batch["token_type_ids"] = torch.zeros_like(ids)
    with torch.no_grad():
        clf_logits = plugged_clf(**batch)["logits"]
    assert_close_fp32(got["clf_logits"], clf_logits, **tol, what=f"{family} classifier logits")
    assert got["id2label"] == dict(enumerate(config["task"]["label_names"]))


def test_export_refusals_write_nothing(families, tmp_path, capsys):
    run = families["roberta"]
    args = ["--pack", str(run["pack"])]

    # A pack trained under another body: one line naming the fingerprints, for both exports.
    bad = tmp_path / "bad_pack"
    shutil.copytree(run["pack"], bad)
    meta = json.loads((bad / "pack.json").read_text())
    meta["body_fingerprint"] = "0123456789abcdef"
    (bad / "pack.json").write_text(json.dumps(meta))
    out = tmp_path / "out" / "x"
    for what, model in (("mlm", run["body"]), ("classifier", run["finetuned"])):
        expect_rejected(capsys, export_main, [what, "--model", str(model), "--pack", str(bad), "--out", str(out)],
                        "does not fit", "0123456789abcdef", watch=[model, bad])
        assert not (tmp_path / "out").exists()
    # ...also through the real launcher.
    expect_rejected_cli("export", ["mlm", "--model", run["body"], "--pack", bad, "--out", out], "does not fit",
                        watch=[bad])
    assert not (tmp_path / "out").exists()

    # A non-empty --out without --overwrite; with it, the export replaces the directory.
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("mine")
    expect_rejected(capsys, export_main, ["mlm", "--model", str(run["body"]), *args, "--out", str(full)],
                    "not empty", "--overwrite", watch=[full])
    export_main(["mlm", "--model", str(run["body"]), *args, "--out", str(full), "--overwrite"])
    assert not (full / "keep.txt").exists() and (full / "tokenizer.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad_pack", "full"]  # no staging left behind

    # A mean-pooling classifier has no stock transformers class: refused, not exported as another model.
    mean = tmp_path / "mean"
    shutil.copytree(run["finetuned"], mean)
    config = json.loads((mean / "config.json").read_text())
    config["task"]["pooling"] = "mean"
    (mean / "config.json").write_text(json.dumps(config))
    expect_rejected(capsys, export_main, ["classifier", "--model", str(mean), *args, "--out", str(out)],
                    "finetune.pooling=mean", "BertForSequenceClassification", watch=[mean])
    # The wrong kind of model for each export.
    expect_rejected(capsys, export_main, ["mlm", "--model", str(run["finetuned"]), *args, "--out", str(out)],
                    "fine-tuned model")
    expect_rejected(capsys, export_main, ["classifier", "--model", str(run["body"]), *args, "--out", str(out)],
                    "not a fine-tuned model")
    assert not (tmp_path / "out").exists()
