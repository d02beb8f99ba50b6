"""Tokenizers of pretrained checkpoints (every kind a real one ships) and the special-id layout of
new vocabularies.

References: transformers' own tokenizer for each kind (XLMRobertaTokenizer over XLM-R's
sentencepiece.bpe.model, XLMRobertaTokenizerFast / RobertaTokenizerFast / BertTokenizerFast over
tokenizer.json) for ids, decoding, special tokens and vocabularies; sentencepiece's own ids; and
the real multilingual-e5-small checkpoint.
"""

import numpy as np
import pytest
import torch

from ds_minimodel.tokenizers import load_tokenizer
from ds_minimodel.tokenizers.pretrained import HFTokenizer
from ds_minimodel.tokenizers.sentencepiece import (
    SentencePieceTokenizer,
    train_tokenizer,
)
from tests.checkpoints import (
    KINDS,
    chichewa_lines,
    english_lines,
    reference,
    write_tokenizer,
)

LINES = [
    "In the beginning God created the heaven and the earth.",
    "And the earth was without form, and void; and darkness was upon the face of the deep.",
    "And God said, Let there be light: and there was light.",
    "Mulungu anati, Kukhale kuwala; ndipo kunali kuwala.",
] * 50


@pytest.fixture(scope="module")
def wordpiece_json(tmp_path_factory) -> str:
    """A small uncased BERT WordPiece tokenizer.json, trained here (no download)."""
    from tokenizers import Tokenizer as RustTokenizer
    from tokenizers import (
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )

    tok = RustTokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok.train_from_iterator(LINES, trainers.WordPieceTrainer(vocab_size=200, special_tokens=specials))
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[
        ("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))])
    tok.enable_truncation(16)  # the loader must switch the file's own truncation off
    path = tmp_path_factory.mktemp("wp") / "tokenizer.json"
    tok.save(str(path))
    return str(path)


def test_tokenizer_json_matches_transformers(wordpiece_json):
    from transformers import PreTrainedTokenizerFast

    ref = PreTrainedTokenizerFast(tokenizer_file=wordpiece_json)
    ref._tokenizer.no_truncation()
    tok = load_tokenizer(wordpiece_json)
    assert isinstance(tok, HFTokenizer) and tok.lowercase
    vocab = ref.get_vocab()
    assert (tok.pad_id, tok.unk_id, tok.bos_id, tok.eos_id, tok.mask_id) == tuple(
        vocab[t] for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"))
    long_text = " ".join(LINES[:3])  # longer than the file's truncation (16)
    ids = tok.encode(long_text)
    assert ids == ref(long_text, add_special_tokens=False)["input_ids"] and len(ids) > 16
    assert tok.encode_batch(LINES[:3]) == ref(LINES[:3], add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == ref.decode(ids, skip_special_tokens=True)
    got_ids, spans = tok.encode_with_offsets(LINES[0])
    enc = ref(LINES[0], add_special_tokens=False, return_offsets_mapping=True)
    assert got_ids == enc["input_ids"] and spans == [tuple(o) for o in enc["offset_mapping"]]
    # word_pieces: WordPiece spelling kept ("##" continuations).
    assert tok.word_pieces() == tok.pieces() and any(p.startswith("##") for p in tok.pieces())


def test_bert_layout_sentencepiece(tmp_path):
    (tmp_path / "t.txt").write_text("\n".join(LINES) + "\n", encoding="utf-8")
    tok = train_tokenizer([str(tmp_path / "t.txt")], str(tmp_path / "sp"), 60, layout="bert")
    assert isinstance(tok, SentencePieceTokenizer)
    assert (tok.pad_id, tok.unk_id, tok.bos_id, tok.eos_id, tok.mask_id) == (0, 1, 2, 3, 4)
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=tok.path)
    assert tok.encode(LINES[0]) == sp.encode(LINES[0]) and sp.pad_id() == 0
    # word_pieces: "▁word" -> "word", a continuation -> "##piece".
    for p, w in zip(tok.pieces(), tok.word_pieces()):
        assert w == (p[1:] if p.startswith("\u2581") else "##" + p)
    with pytest.raises(Exception, match="layout"):
        train_tokenizer([str(tmp_path / "t.txt")], str(tmp_path / "sp2"), 60, layout="gpt")


def test_copy_shared_matches_pieces_across_tokenizer_kinds(wordpiece_json, tmp_path):
    """A sentencepiece target shares rows with a WordPiece source under one spelling, lowercased
    because the source lowercases."""
    from ds_minimodel.steps.adapt.common import init_embeddings

    (tmp_path / "t.txt").write_text("\n".join(LINES) + "\n", encoding="utf-8")
    target = train_tokenizer([str(tmp_path / "t.txt")], str(tmp_path / "sp"), 60, layout="bert")
    source = load_tokenizer(wordpiece_json)
    source_word = torch.randn(source.vocab_size, 8)
    word, bias, record = init_embeddings("copy_shared", source_word, source, target, seed=0)
    src_index = {p: i for i, p in enumerate(source.pieces())}
    expected = 0
    for i, piece in enumerate(target.pieces()):
        if i in target.special_ids:
            continue
        key = piece[1:].lower() if piece.startswith("\u2581") else "##" + piece.lower()
        j = src_index.get(key)
        if j is not None and j not in source.special_ids:
            assert torch.equal(word[i], source_word[j]), piece
            expected += 1
    assert expected > 10 and record["rows_copied"] == expected + 5  # + the five special tokens, by role
    assert torch.equal(word[target.pad_id], source_word[source.pad_id])
    assert torch.equal(word[target.bos_id], source_word[source.bos_id])  # <s> <- [CLS]


def test_prepare_data_with_tokenizer_json(wordpiece_json, tmp_path, capsys):
    from ds_minimodel.data.recipes import prepare_dataset
    from ds_minimodel.data.shards import TokenShards

    (tmp_path / "t.txt").write_text("\n".join(LINES) + "\n", encoding="utf-8")
    index = prepare_dataset(str(tmp_path / "ds"), text_files=[str(tmp_path / "t.txt")],
                            tokenizer_path=wordpiece_json, valid_fraction=0.1)
    tok = load_tokenizer(wordpiece_json)
    assert index["special"] == {"bos": tok.bos_id, "pad": tok.pad_id, "eos": tok.eos_id, "unk": tok.unk_id,
                                "mask": tok.mask_id}
    shards = TokenShards.open(str(tmp_path / "ds"))
    assert isinstance(shards.tokenizer(), HFTokenizer)  # stored as tokenizer.model, read by content
    stream = np.asarray(shards.tokens("train")).tolist()
    first_doc = stream[:stream.index(tok.eos_id)]
    assert tok.decode(first_doc) in {line.lower() for line in LINES}


# ---- Every kind of source tokenizer a checkpoint ships, against transformers ------------------


TEXTS = ["And God said, Let there be light: and there was light.",
         "Zebulun's café — naïve 12345 xyzzy ĳ 日本",  # non-ASCII, unknown characters
         "  spaced   out  ", ""]


@pytest.fixture(scope="module")
def kind_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("kinds")
    return {kind: write_tokenizer(kind, root / kind).parent for kind in KINDS}


@pytest.mark.parametrize("kind", KINDS)
def test_source_tokenizer_of_every_kind_matches_transformers(kind, kind_dirs):
    from ds_minimodel.artefacts.hf_source import source_tokenizer
    from ds_minimodel.tokenizers.pretrained import XLMRSentencePieceTokenizer

    d = kind_dirs[kind]
    ref = reference(kind, d)
    tok = source_tokenizer(d)  # the file chosen and its special ids checked against the checkpoint's
    expected_kind = {"sentencepiece": "sentencepiece-fairseq", "unigram": "unigram-metaspace",
                     "bytelevel": "bpe-bytelevel", "wordpiece": "wordpiece"}[kind]
    assert tok.kind == expected_kind
    assert isinstance(tok, XLMRSentencePieceTokenizer) == (kind == "sentencepiece")
    assert tok.vocab_size == len(ref)
    assert tok.special_role_ids() == {"bos": ref.cls_token_id, "pad": ref.pad_token_id, "eos": ref.sep_token_id,
                                      "unk": ref.unk_token_id, "mask": ref.mask_token_id}
    assert tok.pieces() == ref.convert_ids_to_tokens(list(range(len(ref))))
    for text in TEXTS:
        ids = tok.encode(text)
        assert ids == ref(text, add_special_tokens=False)["input_ids"], text
        assert tok.decode(ids) == ref.decode(ids, skip_special_tokens=True), text
        with_specials = [tok.bos_id, *ids, tok.eos_id, tok.pad_id]
        assert tok.decode(with_specials) == ref.decode(with_specials, skip_special_tokens=True)
    assert tok.encode_batch(TEXTS) == ref(TEXTS, add_special_tokens=False)["input_ids"]
    assert any(tok.unk_id in tok.encode(t) for t in TEXTS) or kind == "bytelevel"  # the texts reach <unk>
    # A copy stored as tokenizer.model (datasets, model directories) reads the same, by content.
    import shutil

    copy = d.parent / f"{kind}-copy.model"
    shutil.copyfile(tok.path, copy)
    again = load_tokenizer(str(copy))
    assert type(again) is type(tok) and again.special_role_ids() == tok.special_role_ids()
    assert again.encode(TEXTS[1]) == tok.encode(TEXTS[1])


@pytest.mark.parametrize("kind", KINDS)
def test_word_pieces_spell_every_kind_alike(kind, kind_dirs):
    """A word-initial piece is the bare word, a continuation "##piece"; for byte-level BPE the
    pieces are decoded from bytes by transformers' own decoder."""
    d = kind_dirs[kind]
    ref = reference(kind, d)
    tok = load_tokenizer(str(next(p for p in d.iterdir() if p.name in ("tokenizer.json", "sentencepiece.bpe.model"))))
    got = tok.word_pieces()
    checked = 0
    for i, token in enumerate(ref.convert_ids_to_tokens(list(range(len(ref))))):
        if i in tok.special_ids:
            continue
        if kind == "wordpiece":
            want = token
        elif kind == "bytelevel":
            text = ref.convert_tokens_to_string([token])
            if "\ufffd" in text:  # part of a multi-byte character: matches nothing
                assert got[i].startswith("\0"), token
                continue
            want = text[1:] if text.startswith(" ") else "##" + text
        else:
            want = token[1:] if token.startswith("\u2581") else "##" + token
        assert got[i] == want, (i, token)
        checked += 1
    assert checked > 100
    words = {w for w in got if not w.startswith("##")}
    assert {"the", "and", "of"} <= words


def _source_token(kind: str, piece: str) -> str:
    """How source vocabulary `kind` spells the target's sentencepiece `piece` ("▁word" or "ord")."""
    start, text = piece.startswith("\u2581"), piece.lstrip("\u2581") if piece.startswith("\u2581") else piece
    if kind == "wordpiece":  # uncased
        return text.lower() if start else "##" + text.lower()
    if kind == "bytelevel":
        from tokenizers.pre_tokenizers import ByteLevel

        return ByteLevel(add_prefix_space=False, use_regex=False).pre_tokenize_str((" " if start else "") + text)[0][0]
    return piece  # the sentencepiece kinds spell pieces as the target does


def check_copy_shared(kind, source_vocab: dict, source_specials, source_tok, source_word, target):
    """init_embeddings' copy_shared table: the rows of pieces both vocabularies share are the source
    rows of those pieces (found in the source vocabulary as its kind spells them); special tokens
    copy by role; every other row is fresh noise at the source table's scale."""
    from ds_minimodel.steps.adapt.common import init_embeddings

    word, bias, record = init_embeddings("copy_shared", source_word, source_tok, target, seed=0)
    assert word.shape == (target.vocab_size, source_word.shape[1]) and torch.equal(bias, torch.zeros(target.vocab_size))
    shared, fresh = 0, []
    for i, piece in enumerate(target.pieces()):
        if i in target.special_ids:
            continue
        j = source_vocab.get(_source_token(kind, piece))
        if j is not None and j not in source_specials:
            assert torch.equal(word[i], source_word[j]), (piece, j)
            shared += 1
        else:
            fresh.append(i)
    for role in ("bos", "pad", "eos", "unk", "mask"):
        assert torch.equal(word[getattr(target, f"{role}_id")], source_word[getattr(source_tok, f"{role}_id")]), role
    assert record["rows_copied"] == shared + 5
    rest = word[fresh]
    # Fresh rows: none is a source row; their spread is the source table's (normal init at its std).
    # (rows compared by their first three values: two random rows never share them by chance)
    source_keys = set(map(tuple, source_word[:, :3].tolist()))
    assert not any(tuple(r) in source_keys for r in rest[:, :3].tolist())
    std = float(source_word.std())
    assert abs(float(rest.std()) - std) < 0.1 * std and abs(float(rest.mean())) < 0.1 * std
    return shared


@pytest.mark.parametrize("kind", KINDS)
def test_copy_shared_copies_the_shared_rows_of_every_kind(kind, kind_dirs, tmp_path):
    """A new language's vocabulary (trained here with the source's layout) against each kind of
    source, whose embedding table is padded beyond its tokenizer (rows never indexed)."""
    from ds_minimodel.tokenizers.sentencepiece import layout_for_special_ids

    d = kind_dirs[kind]
    ref = reference(kind, d)
    source = load_tokenizer(str(next(p for p in d.iterdir() if p.name in ("tokenizer.json", "sentencepiece.bpe.model"))))
    (tmp_path / "t.txt").write_text("\n".join(english_lines(200) + chichewa_lines(200)) + "\n", encoding="utf-8")
    _, layout = layout_for_special_ids(source.special_role_ids())
    target = train_tokenizer([str(tmp_path / "t.txt")], str(tmp_path / "sp"), 300, layout=layout)
    assert target.pad_id == source.pad_id
    source_word = torch.randn(source.vocab_size + 7, 16, generator=torch.Generator().manual_seed(1))
    specials = {ref.convert_tokens_to_ids(t) for t in ref.all_special_tokens}
    shared = check_copy_shared(kind, ref.get_vocab(), specials, source, source_word, target)
    assert shared > 40, shared


def test_layout_follows_the_checkpoints_special_ids(tmp_path):
    import sentencepiece as spm

    from ds_minimodel.tokenizers.sentencepiece import layout_for_special_ids

    xlmr = {"bos": 0, "pad": 1, "eos": 2, "unk": 3, "mask": 250001}  # XLM-R, e5, multilingual MiniLM: any architecture
    bert = {"pad": 0, "unk": 100, "bos": 101, "eos": 102, "mask": 103}  # BERT's WordPiece (all-MiniLM-L6-v2)
    assert layout_for_special_ids(xlmr) == ("xlmr", {"bos_id": 0, "pad_id": 1, "eos_id": 2, "unk_id": 3})
    assert layout_for_special_ids(bert) == ("bert", {"pad_id": 0, "unk_id": 1, "bos_id": 2, "eos_id": 3})
    mask_first = {"mask": 0, "pad": 1, "bos": 5, "eos": 6, "unk": 7}
    name, ids = layout_for_special_ids(mask_first)
    assert ids == {"pad_id": 1, "bos_id": 2, "eos_id": 3, "unk_id": 4} and name == "ids-bos2-pad1-eos3-unk4"
    far_pad = {"bos": 0, "eos": 2, "unk": 3, "mask": 4, "pad": 9}
    _, far = layout_for_special_ids(far_pad)
    assert far == {"bos_id": 0, "eos_id": 1, "unk_id": 2, "pad_id": 9}
    (tmp_path / "t.txt").write_text("\n".join(LINES) + "\n", encoding="utf-8")
    for want, layout in ((mask_first, ids), (far_pad, far)):
        tok = train_tokenizer([str(tmp_path / "t.txt")], str(tmp_path / "sp"), 60, layout=layout)
        sp = spm.SentencePieceProcessor(model_file=tok.path)  # sentencepiece's own ids
        assert (sp.pad_id(), sp.bos_id(), sp.eos_id(), sp.unk_id()) == tuple(layout[k] for k in
                                                                            ("pad_id", "bos_id", "eos_id", "unk_id"))
        assert tok.pad_id == want["pad"] and sp.piece_to_id("<mask>") == tok.mask_id
        assert sorted(tok.special_ids) == sorted({*layout.values(), tok.mask_id})
    assert tok.mask_id == 3  # the lowest id the others leave free
    with pytest.raises(Exception, match="not distinct"):
        layout_for_special_ids({"bos": 0, "pad": 0, "eos": 2, "unk": 3, "mask": 4})


def test_sentencepiece_model_of_neither_layout_is_refused(tmp_path):
    import io

    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(LINES), model_writer=model, vocab_size=40, pad_id=3,
                                   minloglevel=2)
    (tmp_path / "odd.model").write_bytes(model.getvalue())
    with pytest.raises(Exception, match=r"has no <mask> piece and is not XLM-R's sentencepiece model"):
        load_tokenizer(str(tmp_path / "odd.model"))


# ---- The real multilingual-e5-small ------------------------------------------------------------

@pytest.fixture(scope="module")
def e5_ref(e5_dir):
    """transformers' XLM-R tokenizer over the checkpoint's tokenizer.json."""
    import transformers

    return transformers.XLMRobertaTokenizerFast(tokenizer_file=str(e5_dir / "tokenizer.json"))


def test_e5_tokenizer_kind_specials_and_word_pieces(e5_dir, e5_ref):
    from ds_minimodel.artefacts.hf_source import inspect

    src = inspect(e5_dir)
    ref = e5_ref
    assert (src.tokenizer_kind, src.tokenizer_size, src.vocab_rows, src.has_mlm_head) == \
        ("unigram-metaspace", 250002, 250037, False)
    assert src.special_ids == {"bos": ref.cls_token_id, "pad": ref.pad_token_id, "eos": ref.sep_token_id,
                               "unk": ref.unk_token_id, "mask": ref.mask_token_id} == \
        {"bos": 0, "pad": 1, "eos": 2, "unk": 3, "mask": 250001}
    tok = load_tokenizer(str(src.tokenizer_path))
    pieces = ref.convert_ids_to_tokens(list(range(len(ref))))
    got = tok.word_pieces()
    for i in range(4, len(pieces), 97):  # a spread sample of the 250k pieces
        assert got[i] == (pieces[i][1:] if pieces[i].startswith("\u2581") else "##" + pieces[i]), i
    vocab = ref.get_vocab()
    for word in ("the", "Mulungu", "light", "kuwala"):
        if "\u2581" + word in vocab:
            assert got[vocab["\u2581" + word]] == word
    assert not any(w.startswith("##\u2581") for w in got)  # the old spelling of "▁word" that matched nothing


def test_e5_copy_shared_copies_real_rows(e5_dir, e5_ref, tmp_path):
    """The rows come from the checkpoint's own table (read straight from model.safetensors), the
    source tokenizer is the one our model-directory reader picks."""
    from safetensors import safe_open

    from ds_minimodel.artefacts.hf_source import tokenizer_and_overrides
    from ds_minimodel.tokenizers.sentencepiece import layout_for_special_ids

    source, overrides = tokenizer_and_overrides(e5_dir)
    with safe_open(str(e5_dir / "model.safetensors"), framework="pt") as f:
        table = f.get_tensor("embeddings.word_embeddings.weight")
    ref = e5_ref
    assert table.shape == (250037, 384) and source.vocab_size == 250002
    assert overrides == {} and source.pad_id == 1  # config.json's pad_token_id is the tokenizer's
    (tmp_path / "t.txt").write_text("\n".join(english_lines(300) + chichewa_lines(300)) + "\n", encoding="utf-8")
    name, layout = layout_for_special_ids(source.special_role_ids())
    assert name == "xlmr"
    target = train_tokenizer([str(tmp_path / "t.txt")], str(tmp_path / "sp"), 500, layout=layout)
    specials = {ref.convert_tokens_to_ids(t) for t in ref.all_special_tokens}
    shared = check_copy_shared("unigram", ref.get_vocab(), specials, source, table, target)
    assert shared > 200, shared
