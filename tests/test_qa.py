"""Extractive QA (fine-tuning and zero-shot evaluation) and the per-family input layouts.

Hugging Face is the reference throughout: the span head's logits and loss against
*ForQuestionAnswering on the same weights, and the packed inputs (pairs and QA windows, token type
ids, answer labels) against Hugging Face's own tokenizers and run_qa's labelling, for the BERT
family (a WordPiece tokenizer.json) and the RoBERTa/XLM-R family (XLMRobertaTokenizer over the
pieces and scores of one of our sentencepiece models, which gives the same ids).
"""

from __future__ import annotations

import json
import string

import pytest
import torch
import transformers
from torch.utils.flop_counter import FlopCounterMode

from ds_minimodel.artefacts import hf
from ds_minimodel.artefacts.modeldir import read_model_dir
from ds_minimodel.config import ConfigError, FinetuneConfig, ModelConfig, load_config
from ds_minimodel.errors import UserError
from ds_minimodel.method import flops
from ds_minimodel.method.rules import set_requires_grad_for_step
from ds_minimodel.model import QuestionAnswering, SequenceClassifier
from ds_minimodel.steps.finetune.common import ShuffledLoader, load_finetuned
from ds_minimodel.tasks import batching
from ds_minimodel.tasks.batching import encode_qa, encode_texts
from ds_minimodel.tasks.formats import ClassificationExample, load_task
from ds_minimodel.tokenizers import load_tokenizer
from ds_minimodel.tokenizers.layout import BERT, ROBERTA, Layout, layout_for
from ds_minimodel.tokenizers.sentencepiece import train_tokenizer
from tests.conftest import REPO
from tests.helpers import (
    LAYER,
    L,
    assert_close_fp32,
    expect_rejected,
    fp32_tolerance,
    hf_batch,
    hf_config,
    randomise,
    run_step,
)

transformers.logging.set_verbosity_error()
QA_FIX = REPO / "tests" / "fixtures" / "qa"
HF_QA = {"bert": transformers.BertForQuestionAnswering, "roberta": transformers.RobertaForQuestionAnswering,
         "xlm-roberta": transformers.XLMRobertaForQuestionAnswering}


# --------------------------------------------------------------------------------------------
# The span head against Hugging Face


def ours_from_hf_qa(ref, **overrides) -> QuestionAnswering:
    """Our QA model holding the weights of a Hugging Face *ForQuestionAnswering model."""
    sd = ref.state_dict()
    enc, has_mlm_head = hf.state_dict_from_hf({k: v for k, v in sd.items() if not k.startswith("qa_outputs.")},
                                              ref.config.model_type)
    assert not has_mlm_head
    model = QuestionAnswering(hf.config_from_hf(ref.config, **overrides))
    missing = model.encoder.load_state_dict(enc, strict=False).missing_keys
    assert all(k.startswith("lm_head.") for k in missing)  # QA checkpoints have no MLM head (never run)
    model.qa_outputs.load_state_dict({"weight": sd["qa_outputs.weight"], "bias": sd["qa_outputs.bias"]})
    return model.eval()


@pytest.mark.parametrize("model_type", list(HF_QA))
def test_qa_logits_loss_and_gradients_match_hugging_face(model_type):
    ref = randomise(HF_QA[model_type](hf_config(model_type)), seed=5)
    ours = ours_from_hf_qa(ref, attention="explicit")
    ids, mask = hf_batch(ours.encoder.cfg.pad_token_id)
    # BERT: segment B from position 4 (type 1), padding type 0, as its tokenizers produce.
    types = (torch.arange(ids.shape[1]) >= 4).long() * mask if model_type == "bert" else None
    # The third row's positions lie outside the sequence: clamped and ignored by both.
    start, end = torch.tensor([2, 0, 40]), torch.tensor([5, 0, 3])
    want = ref(input_ids=ids, attention_mask=mask, token_type_ids=types, start_positions=start, end_positions=end)
    got = ours(ids, attention_mask=mask, token_type_ids=types, start_positions=start, end_positions=end)
    # fp32 bounds (tests/helpers.py): logits and loss went through embeddings, L layers and the
    # span head (L + 2 stages); the head's weight gradient is one backward stage more, summed over
    # the 33 tokens; layer 0's gradient comes back through every stage again: 2 (L + 2).
    for key in ("start_logits", "end_logits"):
        assert_close_fp32(got[key], getattr(want, key), depth=L + 2, **LAYER, what=key)
    assert_close_fp32(got["loss"], want.loss, depth=L + 2, **LAYER, what="loss")
    want.loss.backward()
    got["loss"].backward()
    assert_close_fp32(ours.qa_outputs.weight.grad, ref.qa_outputs.weight.grad, depth=L + 3, **LAYER,
                      what="d qa_outputs.weight")
    prefix = "bert" if model_type == "bert" else "roberta"
    theirs = getattr(ref, prefix).encoder.layer[0].intermediate.dense.weight.grad
    assert_close_fp32(ours.encoder.layers[0].fc1.weight.grad, theirs, depth=2 * (L + 2), **LAYER,
                      what="d layers.0.fc1.weight")
    if model_type == "bert":  # the segment embedding is really used: other types, other logits
        other = ours(ids, attention_mask=mask)["start_logits"]
        tol = fp32_tolerance(got["start_logits"], depth=L + 2, **LAYER)  # more than rounding apart
        assert not torch.allclose(other, got["start_logits"], **tol)


@pytest.mark.parametrize("position_style", ["roberta", "bert"])
def test_qa_step_flops_exact_under_flop_counter_mode(position_style):
    """One real QuestionAnswering fine-tuning step (frozen as fine-tuning freezes it, padded batch,
    token types for BERT) counts exactly what step_flops("finetune_qa") says."""
    pad = 1 if position_style == "roberta" else 0
    cfg = ModelConfig(vocab_size=120, hidden_size=32, num_layers=3, num_heads=4, intermediate_size=64,
                      max_positions=40, pad_token_id=pad, position_style=position_style,
                      type_vocab_size=2 if position_style == "bert" else 1, attention="explicit", kernels="off")
    torch.manual_seed(0)
    model = QuestionAnswering(cfg)
    set_requires_grad_for_step(model, "finetune_qa")
    ids, mask = hf_batch(pad)
    types = (torch.arange(ids.shape[1]) >= 4).long() * mask if position_style == "bert" else None
    B, T = ids.shape
    with FlopCounterMode(display=False) as fwd:
        loss = model(ids, attention_mask=mask, token_type_ids=types, start_positions=torch.tensor([3, 0, 7]),
                     end_positions=torch.tensor([4, 0, 9]))["loss"]
    with FlopCounterMode(display=False) as bwd:
        loss.backward()
    report = flops.step_flops(cfg, "finetune_qa", B, T, 0)
    assert (report.forward, report.backward) == (fwd.get_total_flops(), bwd.get_total_flops())
    assert report.components["task_head"].forward == 2 * B * T * 32 * 2
    trained = {n for n, p in model.named_parameters() if p.grad is not None}
    frozen = ("encoder.embeddings.", "encoder.lm_head.", "encoder.mid_head.")  # as fine-tuning is specified
    assert trained == {n for n, _ in model.named_parameters() if not n.startswith(frozen)}


# --------------------------------------------------------------------------------------------
# Layouts per model family, against Hugging Face's tokenizers


def test_layout_comes_from_the_model_config():
    def cfg_of(model_type, **kw):
        return hf.config_from_hf(hf_config(model_type, **kw))

    assert layout_for(cfg_of("bert")) == BERT and BERT.segment_ids and BERT.separators == 1
    assert layout_for(cfg_of("bert", type_vocab_size=1)) == Layout("bert", segment_ids=False)
    assert layout_for(cfg_of("roberta")) == layout_for(cfg_of("xlm-roberta")) == ROBERTA
    assert layout_for(ModelConfig()) == ROBERTA and ROBERTA.separators == 2  # our own models
    with pytest.raises(ValueError, match="only fed to BERT"):
        Layout("roberta", segment_ids=True)


_TEXTS = [(ex.question, ex.context) for ex in load_task("mlqa", str(QA_FIX), "en", "train")]
_PAIRS = [("Where does the Rhine rise?", "The largest city on the river Rhine is Cologne, Germany."),
          ("The valley railway opened in 1878 and ran for forty miles between Arden and Kelby.",
           "Its engines burned coal.")]


@pytest.fixture(scope="module")
def bert_tok(tmp_path_factory):
    """A lowercasing WordPiece tokenizer (BertTokenizer) and our HFTokenizer over its tokenizer.json.
    Half the words are whole pieces, the rest split into ##letters."""
    words = sorted({w.strip(string.punctuation).lower() for q, c in _TEXTS + _PAIRS for w in (q + " " + c).split()})
    letters = sorted(set("".join(words)) | set(string.ascii_lowercase))
    vocab = (["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + list(string.punctuation) + letters
             + ["##" + ch for ch in letters] + words[::2])
    ref = transformers.BertTokenizer(vocab={p: i for i, p in enumerate(dict.fromkeys(vocab))})
    d = tmp_path_factory.mktemp("bert_tok")
    ref.save_pretrained(str(d))
    ours = load_tokenizer(str(d / "tokenizer.json"))
    assert (ours.bos_id, ours.eos_id, ours.pad_id) == (ref.cls_token_id, ref.sep_token_id, ref.pad_token_id)
    return ref, ours


@pytest.fixture(scope="module")
def xlmr_tok(tmp_path_factory):
    """One of our sentencepiece models and XLMRobertaTokenizer over the same pieces and scores."""
    d = tmp_path_factory.mktemp("xlmr_tok")
    (d / "lines.txt").write_text("\n".join(t for pair in _TEXTS + _PAIRS for t in pair) + "\n", encoding="utf-8")
    ours = train_tokenizer([str(d / "lines.txt")], str(d / "sp"), 120)
    sp = ours._sp
    ref = transformers.XLMRobertaTokenizer(vocab=[(sp.id_to_piece(i), sp.get_score(i))
                                                  for i in range(sp.get_piece_size())])
    assert ref("Where does it rise?")["input_ids"][1:-1] == ours.encode("Where does it rise?")
    return ref, ours


@pytest.mark.parametrize("family", ["bert", "roberta"])
@pytest.mark.parametrize("max_len", [64, 16])  # 16 truncates longest-first
def test_pair_layout_matches_hugging_face(family, max_len, request):
    ref, tok = request.getfixturevalue("bert_tok" if family == "bert" else "xlmr_tok")
    layout = BERT if family == "bert" else ROBERTA
    examples = [ClassificationExample(a, b, 0, str(i)) for i, (a, b) in enumerate(_PAIRS)]
    examples.append(ClassificationExample(_PAIRS[0][1], None, 1, "single"))
    enc = encode_texts(examples, tok, max_len, layout)
    for i, ex in enumerate(examples):
        want = ref(ex.text_a, ex.text_b, truncation="longest_first", max_length=max_len, return_token_type_ids=True)
        assert enc.ids[i] == want["input_ids"], ex.id
        if family == "bert":
            assert enc.type_ids[i] == want["token_type_ids"], ex.id
        else:
            assert enc.type_ids is None
    batch = batching.padded_batch(enc, range(len(examples)), tok.pad_id)
    assert ("token_type_ids" in batch) == (family == "bert")
    if family == "bert":  # padding is type 0
        assert batch["token_type_ids"][2].tolist() == [0] * batch["input_ids"].shape[1]


def run_qa_labels(enc, examples, cls_id) -> list[tuple[int, int]]:
    """Hugging Face's run_qa prepare_train_features: the labelled start/end token of each window."""
    out = []
    for i, offsets in enumerate(enc["offset_mapping"]):
        ex = examples[enc["overflow_to_sample_mapping"][i]]
        seq = enc.sequence_ids(i)
        start_char = ex.answers[0]["answer_start"]
        end_char = start_char + len(ex.answers[0]["text"])
        s, e = 0, len(enc["input_ids"][i]) - 1
        while seq[s] != 1:
            s += 1
        while seq[e] != 1:
            e -= 1
        if not (offsets[s][0] <= start_char and offsets[e][1] >= end_char):
            cls = enc["input_ids"][i].index(cls_id)
            out.append((cls, cls))
            continue
        while s < len(offsets) and offsets[s][0] <= start_char:
            s += 1
        while offsets[e][1] >= end_char:
            e -= 1
        out.append((s - 1, e + 1))
    return out


@pytest.mark.parametrize("family", ["bert", "roberta"])
def test_qa_windows_and_labels_match_hugging_face(family, request):
    """Windows, token types and answer labels as Hugging Face's tokenizer with
    truncation="only_second" + stride (the overlap: ours is the step, window - overlap) and
    run_qa's labelling produce them."""
    ref, tok = request.getfixturevalue("bert_tok" if family == "bert" else "xlmr_tok")
    layout = BERT if family == "bert" else ROBERTA
    examples = load_task("mlqa", str(QA_FIX), "en", "train")
    max_len, overlap = 40, 6
    feats_by_ex = []
    for ex in examples:
        window = max_len - len(tok.encode(ex.question)) - 2 - layout.separators
        feats = encode_qa([ex], tok, max_len=max_len, doc_stride=window - overlap, max_query_len=64, layout=layout)
        assert not feats.unlocated
        feats_by_ex.append(feats)
    want = ref([ex.question for ex in examples], [ex.context for ex in examples], truncation="only_second",
               max_length=max_len, stride=overlap, return_overflowing_tokens=True, return_offsets_mapping=True,
               return_token_type_ids=True)
    labels = run_qa_labels(want, examples, ref.cls_token_id)
    rows, types, ours_labels = [], [], []
    for feats in feats_by_ex:
        for f in range(len(feats)):
            n = int(feats.attention_mask[f].sum())
            rows.append(feats.input_ids[f, :n].tolist())
            if family == "bert":
                types.append(feats.token_type_ids[f, :n].tolist())
            ours_labels.append((int(feats.start_positions[f]), int(feats.end_positions[f])))
    assert len(rows) > len(examples)  # several windows per context
    assert rows == want["input_ids"]
    if family == "bert":
        assert types == want["token_type_ids"]
    else:
        assert all(f.token_type_ids is None for f in feats_by_ex)
    assert ours_labels == labels


# --------------------------------------------------------------------------------------------
# Config, loader


def test_qa_config_problems_reported_together():
    cfg = load_config(FinetuneConfig, overrides=["finetune.task=squad", "finetune.task_path=x", "finetune.max_len=384",
                                                 "finetune.doc_stride=128"])
    assert cfg.finetune.is_qa and cfg.finetune.max_query_len == 64
    with pytest.raises(ConfigError) as e:
        load_config(FinetuneConfig, overrides=["finetune.task=mlqa", "finetune.task_path=x", "finetune.max_len=40",
                                               "finetune.max_query_len=64", "finetune.doc_stride=0"])
    msg = str(e.value)
    assert "2 config problem(s)" in msg and "doc_stride must be positive" in msg
    assert "finetune.max_len 40 leaves no room for context" in msg and "at least 69" in msg
    with pytest.raises(ConfigError, match=r"task must be bible-genre\|bible-testament\|xnli\|pawsx\|mlqa\|squad"):
        load_config(FinetuneConfig, overrides=["finetune.task=qa", "finetune.task_path=x"])
    with pytest.raises(ConfigError, match="finetune.task mlqa needs finetune.task_path"):
        load_config(FinetuneConfig, overrides=["finetune.task=mlqa"])


def test_shuffled_loader_resumes_where_it_stopped():
    def make(rank):
        return ShuffledLoader(23, lambda idx: {"idx": torch.as_tensor(idx)}, 2, 2, rank, 2, seed=7)

    a, b = make(1), make(1)
    for _ in range(7):  # crosses an epoch boundary (8 rows per step, 23 rows)
        a.next_step()
    b.load_state_dict(json.loads(json.dumps(a.state_dict())))
    assert [x["idx"].tolist() for x in a.next_step()] == [x["idx"].tolist() for x in b.next_step()]
    with pytest.raises(UserError, match="cannot resume"):
        ShuffledLoader(24, lambda idx: idx, 2, 2, 1, 2, seed=7).load_state_dict(a.state_dict())
    with pytest.raises(UserError, match="fewer than one global batch"):
        ShuffledLoader(7, lambda idx: idx, 2, 2, 0, 2, seed=7)


# --------------------------------------------------------------------------------------------
# Fine-tune, export, plug a pack in, evaluate


@pytest.fixture(scope="module")
def qa_model(tiny_model_dir, tmp_path_factory):
    ft = tmp_path_factory.mktemp("qa_ft") / "run"
    run_step("finetune", "tests/fixtures/finetune-tiny.yaml", f"finetune.model_dir={tiny_model_dir}", f"train.out_dir={ft}",
             "finetune.task=mlqa", f"finetune.task_path={QA_FIX}", "finetune.max_len=64", "finetune.max_query_len=16", "finetune.doc_stride=24", "finetune.eval_examples=0")
    return ft


def test_qa_finetune_trains_body_and_head_with_embeddings_bit_identical(qa_model, tiny_model_dir):
    source, _, _ = read_model_dir(tiny_model_dir)
    tuned = torch.load(qa_model / "final" / "model.pt", weights_only=True)
    for name, tensor in source.items():
        if name.startswith(("embeddings.", "lm_head.", "mid_head.")):
            assert torch.equal(tuned[f"encoder.{name}"], tensor), f"{name} changed during fine-tuning"
    assert not torch.equal(tuned["encoder.layers.3.fc1.weight"], source["layers.3.fc1.weight"])
    assert tuned["qa_outputs.weight"].shape == (2, 32)
    model, config, lineage = load_finetuned(qa_model / "final")
    assert isinstance(model, QuestionAnswering) and not model.training
    assert lineage["task_kind"] == "qa" and config["task"]["kind"] == "qa"
    assert (config["task"]["doc_stride"], config["task"]["max_query_len"]) == (24, 16)
    assert config["task"]["layout"] == "roberta"
    records = [json.loads(line) for line in (qa_model / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if "valid_f1" in r]
    assert [r["step"] for r in evals] == [0, 2, 4]
    assert all(0.0 <= r[k] <= 100.0 for r in evals for k in ("valid_exact_match", "valid_f1"))
    train = [r for r in records if "loss" in r]
    assert len(train) == 4 and all(r["flops"] > 0 for r in train)


@pytest.mark.parametrize("task", ["mlqa", "xnli"])
def test_bert_family_finetunes_with_token_type_ids(task, bert_tok, tmp_path):
    """A BERT checkpoint (Hugging Face directory with its tokenizer.json) fine-tunes through the
    DeepSpeed engine with [CLS] A [SEP] B [SEP] rows and token_type_ids; the whole embedding
    module, segment table included, stays bit-identical."""
    import shutil

    _, tok = bert_tok
    src = tmp_path / "bert"
    transformers.BertForMaskedLM(hf_config("bert", vocab_size=tok.vocab_size)).save_pretrained(str(src))
    shutil.copy(tok.path, src / "tokenizer.json")
    fix = QA_FIX if task == "mlqa" else REPO / "tests" / "fixtures" / "tasks"
    out = tmp_path / "ft"
    run_step("finetune", "tests/fixtures/finetune-tiny.yaml", f"finetune.model_dir={src}", f"train.out_dir={out}", f"finetune.task={task}",
             f"finetune.task_path={fix}", "finetune.max_len=40", "finetune.max_query_len=12", "finetune.doc_stride=16", "train.steps=2",
             "train.micro_batch_size=4")
    source, _, _ = read_model_dir(src)
    model, config, _ = load_finetuned(out / "final")
    for name in ("embeddings.word", "embeddings.token_type", "embeddings.position", "embeddings.layer_norm.weight"):
        assert torch.equal(model.state_dict()[f"encoder.{name}"], source[name]), name
    assert not torch.equal(model.state_dict()["encoder.layers.2.fc1.weight"], source["layers.2.fc1.weight"])
    if task == "mlqa":
        assert isinstance(model, QuestionAnswering) and config["task"]["layout"] == "bert"
        first = load_task("mlqa", str(QA_FIX), "en", "train")[:1]
        feats = encode_qa(first, tok, 40, 16, 12, layout_for(model.encoder.cfg))
        assert feats.token_type_ids is not None and "token_type_ids" in feats.batch([0])


def _pack(tmp_path, tiny_target_corpus, model_dir, fingerprint=None):
    """A Chichewa pack for the tiny model (random embeddings at the source table's scale: what is
    tested here is plugging and scoring, not how well adaptation went)."""
    from ds_minimodel.artefacts.langpack import PackInfo, save_pack

    source, cfg, lineage = read_model_dir(model_dir)
    tok_path = str(tiny_target_corpus / "tokenizer.model")
    tok = load_tokenizer(tok_path)
    g = torch.Generator().manual_seed(3)
    word = torch.randn(tok.vocab_size, cfg.hidden_size, generator=g) * float(source["embeddings.word"].std())
    info = PackInfo(language="ny", method="minijoint", vocab_size=tok.vocab_size, hidden_size=cfg.hidden_size,
                    pad_token_id=tok.pad_id, special={"pad": tok.pad_id, "bos": tok.bos_id, "eos": tok.eos_id},
                    body_fingerprint=fingerprint or lineage["body_fingerprints"]["1"], mini_depth=1,
                    tokenizer_fingerprint=tok.fingerprint())
    return save_pack(tmp_path / ("bad_pack" if fingerprint else "pack"), info, word, torch.zeros(tok.vocab_size),
                     tok_path)


def test_qa_zero_shot_evaluation_with_a_plugged_pack(qa_model, tiny_model_dir, tiny_target_corpus, tmp_path, capsys):
    from launchers.evaluate import main as evaluate_main

    pack = _pack(tmp_path, tiny_target_corpus, tiny_model_dir)
    out = tmp_path / "transfer.json"
    evaluate_main(["--model", str(qa_model / "final"), "--pack", str(pack), "--out", str(out)])
    result = json.loads(out.read_text())["qa"]
    assert result["source"]["split"] == "test" and result["source"]["questions"] == 3
    scores = result["packs"][str(pack)]
    assert scores["language"] == "ny" and scores["method"] == "minijoint" and scores["questions"] == 4
    for key in ("exact_match", "f1", "control_exact_match", "control_f1"):
        assert 0.0 <= scores[key] <= 100.0, key
    assert 0.0 <= result["source"]["f1"] <= 100.0

    # A pack trained under another body is refused before anything is scored or written.
    bad = _pack(tmp_path, tiny_target_corpus, tiny_model_dir, fingerprint="0123456789abcdef")
    capsys.readouterr()
    out2 = tmp_path / "bad.json"
    expect_rejected(capsys, evaluate_main, ["--model", str(qa_model / "final"), "--pack", str(bad), "--out",
                                            str(out2)], "does not fit", "0123456789abcdef", watch=[qa_model, bad])
    assert not out2.exists()


def test_qa_scores_are_rank_split_consistent(qa_model):
    """EM/F1 split over ranks (questions dealt round-robin) equals the single-rank score; a
    classifier loader refuses a QA model with a clear message."""
    from ds_minimodel.steps.finetune.common import load_classifier
    from ds_minimodel.steps.finetune.qa import encode_for, qa_scores

    model, config, lineage = load_finetuned(qa_model / "final")
    tok = load_tokenizer(lineage["tokenizer"])
    dev = load_task("mlqa", str(QA_FIX), "en", "validation")
    feats = encode_for(model.encoder.cfg, dev, tok, config["task"])
    whole = qa_scores(model, feats, dev, batch_size=3)
    # Two "ranks" without a process group: their sums (weighted by question count) add up.
    parts = [qa_scores(model, feats, dev, batch_size=3, rank=r, world_size=2) for r in (0, 1)]
    mine = [sum(1 for i in range(len(dev)) if i % 2 == r) for r in (0, 1)]
    for key in ("exact_match", "f1"):
        assert sum(p[key] * n for p, n in zip(parts, mine)) / len(dev) == pytest.approx(whole[key])
    with pytest.raises(UserError, match="extractive QA model, not a classifier"):
        load_classifier(qa_model / "final")
    assert isinstance(SequenceClassifier(model.encoder.cfg, 2).with_config(model.encoder.cfg), SequenceClassifier)
