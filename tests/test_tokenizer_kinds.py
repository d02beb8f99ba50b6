"""Tokenizers of pretrained models (tokenizer.json) and BERT's special-id layout.

References: `transformers`' fast tokenizers for ids and offsets, and sentencepiece's own ids.
"""

import numpy as np
import pytest
import torch

from ds_minimodel.tokenizer import (
    HFTokenizer,
    SentencePieceTokenizer,
    Tokenizer,
    train_tokenizer,
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
    tok = Tokenizer.load(wordpiece_json)
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
    from ds_minimodel.steps.adapt import init_embeddings

    (tmp_path / "t.txt").write_text("\n".join(LINES) + "\n", encoding="utf-8")
    target = train_tokenizer([str(tmp_path / "t.txt")], str(tmp_path / "sp"), 60, layout="bert")
    source = Tokenizer.load(wordpiece_json)
    source_word = torch.randn(source.vocab_size, 8)
    word, bias, copied = init_embeddings("copy_shared", source_word, source, target, seed=0)
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
    assert expected > 10 and copied == expected + 5  # + the five special tokens, by role
    assert torch.equal(word[target.pad_id], source_word[source.pad_id])
    assert torch.equal(word[target.bos_id], source_word[source.bos_id])  # <s> <- [CLS]


def test_prepare_data_with_tokenizer_json(wordpiece_json, tmp_path, capsys):
    from ds_minimodel.data.recipes import prepare_dataset
    from ds_minimodel.data.shards import TokenShards

    (tmp_path / "t.txt").write_text("\n".join(LINES) + "\n", encoding="utf-8")
    index = prepare_dataset(str(tmp_path / "ds"), text_files=[str(tmp_path / "t.txt")],
                            tokenizer_path=wordpiece_json, valid_fraction=0.1)
    tok = Tokenizer.load(wordpiece_json)
    assert index["special"] == {"bos": tok.bos_id, "pad": tok.pad_id, "eos": tok.eos_id, "unk": tok.unk_id,
                                "mask": tok.mask_id}
    shards = TokenShards.open(str(tmp_path / "ds"))
    assert isinstance(shards.tokenizer(), HFTokenizer)  # stored as tokenizer.model, read by content
    stream = np.asarray(shards.tokens("train")).tolist()
    first_doc = stream[:stream.index(tok.eos_id)]
    assert tok.decode(first_doc) in {line.lower() for line in LINES}
