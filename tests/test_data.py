"""Data pipeline: tokenizer, shards, masking, the resumable loader, recipes, prepare_data.py."""

import importlib.util
import json
import os
import random

import numpy as np
import pytest
import torch

from ds_minimodel.data import (
    MLMLoader,
    TokenShards,
    eval_batches,
    mask_tokens,
    bible_table,
    bibles,
    write_shards,
)
from ds_minimodel.errors import InvalidValueError, MissingFileError, UserError
from ds_minimodel.tokenizers import load_tokenizer
from ds_minimodel.tokenizers.sentencepiece import train_tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VOCAB = 300


def _load_prepare_data():
    spec = importlib.util.spec_from_file_location("prepare_data", os.path.join(ROOT, "launchers", "prepare_data.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


prepare_data = _load_prepare_data()


def _corpus_lines(n_lines, seed=0):
    # Lowercase ASCII words with single spaces: sentencepiece's normaliser leaves them as they
    # are, so decode(encode(x)) == x and round trips can be compared as strings.
    rng = random.Random(seed)
    words = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 8))) for _ in range(300)]
    return [" ".join(rng.choice(words) for _ in range(rng.randint(5, 25))) for _ in range(n_lines)]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("corpus")
    path = d / "corpus.txt"
    path.write_text("\n".join(_corpus_lines(400)) + "\n", encoding="utf-8")
    return str(path)


@pytest.fixture(scope="module")
def tok(corpus, tmp_path_factory):
    return train_tokenizer([corpus], str(tmp_path_factory.mktemp("tok") / "sp"), VOCAB)


@pytest.fixture(scope="module")
def shards(tok, tmp_path_factory):
    docs = _corpus_lines(300, seed=1)
    out = str(tmp_path_factory.mktemp("shards") / "ds")
    write_shards(out, {"train": (tok.encode(d) for d in docs[:250]), "valid": (tok.encode(d) for d in docs[250:])},
                 tok.path, {"what": "test"})
    return TokenShards.open(out)


# --------------------------------------------------------------------------------------------
# tokenizer and shards

def test_tokenizer_special_ids_and_determinism(tok, corpus, tmp_path):
    assert (tok.bos_id, tok.pad_id, tok.eos_id, tok.unk_id) == (0, 1, 2, 3)
    assert tok.piece(tok.mask_id) == "<mask>" and tok.mask_id == 4
    assert tok.special_ids == {0, 1, 2, 3, 4}
    assert tok.vocab_size == VOCAB and len(tok.pieces()) == VOCAB
    text = "hello world"
    ids = tok.encode(text)
    assert tok.special_ids.isdisjoint(ids) and tok.decode(ids) == text
    assert tok.encode_batch([text, text]) == [ids, ids]
    # Same inputs and seed -> the same model bytes, wherever it is written.
    again = train_tokenizer([corpus], str(tmp_path / "elsewhere" / "other"), VOCAB)
    assert again.fingerprint() == tok.fingerprint()
    assert load_tokenizer(tok.path).fingerprint() == tok.fingerprint()


def test_tokenizer_errors(corpus, tmp_path):
    with pytest.raises(MissingFileError, match="nope.model"):
        load_tokenizer(str(tmp_path / "nope.model"))
    with pytest.raises(UserError, match=r"vocab_size 100000 .*too high.*--vocab-limit soft\)$"):
        train_tokenizer([corpus], str(tmp_path / "big"), 100000)
    with pytest.raises(InvalidValueError, match="vocab_limit 'loose'"):
        train_tokenizer([corpus], str(tmp_path / "big"), VOCAB, vocab_limit="loose")


def test_soft_vocab_limit_takes_what_the_corpus_has(corpus, tmp_path):
    """A corpus with fewer distinct pieces than asked for (Vietnamese's Bible against 8,000):
    "soft" trains the largest vocabulary sentencepiece can, below the request; "hard" refuses.
    The dataset records both sizes."""
    soft = train_tokenizer([corpus], str(tmp_path / "soft"), 100000, vocab_limit="soft")
    assert 300 < soft.vocab_size < 100000 and soft.special_ids == {0, 1, 2, 3, 4}
    out = tmp_path / "ds"
    code = prepare_data.main(["--text", corpus, "--out", str(out), "--vocab-size", "100000", "--vocab-limit", "soft"])
    assert code in (0, None)
    meta = json.loads((out / "index.json").read_text())
    assert 300 < meta["vocab_size"] < 100000  # trained on the train split only: close to `soft`'s size
    assert (meta["meta"]["tokenizer"]["vocab_size"], meta["meta"]["tokenizer"]["requested_vocab_size"]) == \
        (meta["vocab_size"], 100000)


def test_shards_round_trip(tok, tmp_path):
    docs = _corpus_lines(20, seed=3)
    out = str(tmp_path / "ds")
    index = write_shards(out, {"train": (tok.encode(d) for d in docs)}, tok.path, {"k": 1})
    ds = TokenShards.open(out)
    assert ds.index == index and index["meta"] == {"k": 1}
    assert index["special"] == {"bos": 0, "pad": 1, "eos": 2, "unk": 3, "mask": 4}
    info = index["splits"]["train"]
    assert info["dtype"] == "uint16" and info["num_documents"] == 20
    stream = np.asarray(ds.tokens("train")).tolist()
    assert len(stream) == info["num_tokens"] and stream[-1] == tok.eos_id
    pieces = []
    cur = []
    for t in stream:
        if t == tok.eos_id:
            pieces.append(cur)
            cur = []
        else:
            cur.append(t)
    assert [ds.tokenizer().decode(p) for p in pieces] == docs
    assert ds.tokenizer().fingerprint() == tok.fingerprint()
    assert sorted(os.listdir(tmp_path)) == ["ds"]  # the temporary directory is gone


def test_shards_errors(tok, tmp_path):
    with pytest.raises(MissingFileError, match="does not exist"):
        TokenShards.open(str(tmp_path / "missing"))
    (tmp_path / "noindex").mkdir()
    with pytest.raises(MissingFileError, match="index.json"):
        TokenShards.open(str(tmp_path / "noindex"))
    with pytest.raises(InvalidValueError, match="split 'train'.*no tokens"):
        write_shards(str(tmp_path / "empty"), {"train": iter([[], []])}, tok.path, {})
    assert not (tmp_path / "empty").exists()  # nothing half-written
    assert [p for p in os.listdir(tmp_path) if p.startswith(".")] == []
    out = str(tmp_path / "ds")
    write_shards(out, {"train": [tok.encode("abc def")] * 10}, tok.path, {})
    with pytest.raises(InvalidValueError, match="not empty"):
        write_shards(out, {"train": [[5, 6]]}, tok.path, {})
    with open(os.path.join(out, "train.bin"), "ab") as f:
        f.write(b"\0\0")
    with pytest.raises(InvalidValueError, match="train.bin has .* bytes, expected"):
        TokenShards.open(out)
    with pytest.raises(InvalidValueError, match="outside the tokenizer's vocabulary"):
        write_shards(str(tmp_path / "bad"), {"train": [[5, VOCAB + 7]]}, tok.path, {})


# --------------------------------------------------------------------------------------------
# masking

def test_mask_statistics():
    vocab, specials, mask_id = 1000, {0, 1, 2, 3, 4}, 4
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(5, vocab, (64, 512), generator=gen)
    ids[:, 0], ids[:, -1], ids[:, 100] = 0, 2, 1  # specials must never be selected
    seeds = list(range(1000, 1064))
    out, labels = mask_tokens(ids, seeds, 0.15, mask_id, vocab, specials)
    assert not torch.equal(out, ids) and ids[:, 0].eq(0).all()  # input untouched, output corrupted
    sel = labels != -100
    assert not sel[:, [0, 100, -1]].any()
    assert torch.equal(labels[sel], ids[sel])
    maskable = 64 * 509
    frac = sel.sum().item() / maskable
    assert abs(frac - 0.15) < 0.01, frac
    n = sel.sum().item()
    to_mask = (out[sel] == mask_id).float().sum().item() / n
    unchanged = (out[sel] == ids[sel]).float().sum().item() / n
    replaced = 1 - to_mask - unchanged
    assert abs(to_mask - 0.8) < 0.02 and abs(unchanged - 0.1) < 0.02 and abs(replaced - 0.1) < 0.02
    assert not torch.isin(out[sel & (out != mask_id)], torch.tensor(sorted(specials))).any()
    assert torch.equal(out[~sel], ids[~sel])
    # A row's corruption depends on its seed only, not on the rest of the batch.
    solo_out, solo_labels = mask_tokens(ids[7:8], seeds[7:8], 0.15, mask_id, vocab, specials)
    other_out, other_labels = mask_tokens(torch.cat([ids[30:31], ids[7:8]]), [5, seeds[7]], 0.15, mask_id, vocab,
                                          specials)
    assert torch.equal(solo_out[0], out[7]) and torch.equal(other_out[1], out[7])
    assert torch.equal(solo_labels[0], labels[7]) and torch.equal(other_labels[1], labels[7])


def test_mask_never_empty_row():
    row = torch.tensor([[0, 9, 2, 1, 1, 1], [0, 2, 1, 1, 1, 1]])  # one real token; none
    for seed in range(50):
        _, labels = mask_tokens(row, [seed, seed], 0.15, 4, 20, {0, 1, 2, 3, 4})
        assert labels[0].tolist() == [-100, 9, -100, -100, -100, -100]
        assert (labels[1] == -100).all()


# --------------------------------------------------------------------------------------------
# loader

def _steps(loader, n):
    return [loader.next_step() for _ in range(n)]


def test_loader_ranks_union_equals_single_process(shards):
    kw = dict(shards=shards, split="train", seq_len=32, grad_accum=2, seed=7)
    single = MLMLoader(micro_batch_size=4, rank=0, world_size=1, **kw)
    ranks = [MLMLoader(micro_batch_size=2, rank=r, world_size=2, **kw) for r in range(2)]
    assert single.tokens_per_step == ranks[0].tokens_per_step == 8 * 32
    n_steps = single.samples_per_epoch // 8 + 2  # crosses an epoch boundary
    for _ in range(n_steps):
        s = single.next_step()
        per_rank = [r.next_step() for r in ranks]
        assert len(s) == 2
        for m in range(2):
            assert s[m]["input_ids"].shape == (4, 32) and per_rank[0][m]["input_ids"].shape == (2, 32)
            for key in ("input_ids", "labels"):
                assert torch.equal(s[m][key], torch.cat([per_rank[0][m][key], per_rank[1][m][key]]))
    assert single.epoch == 1


def test_loader_samples_and_epoch_wrap(shards):
    loader = MLMLoader(shards, "train", 32, 2, 1, 0, 1, seed=0, shuffle=False)
    tokens = np.asarray(shards.tokens("train"))
    n = loader.samples_per_epoch
    assert n == len(tokens) // 30
    first = loader.next_step()[0]
    ids, labels = first["input_ids"], first["labels"]
    original = torch.where(labels != -100, labels, ids)
    assert original[:, 0].eq(0).all() and original[:, -1].eq(2).all()
    assert original[1, 1:-1].tolist() == tokens[30:60].tolist()
    assert (labels != -100).sum(1).ge(1).all()
    steps_per_epoch = n // 2
    _steps(loader, steps_per_epoch - 1)
    assert (loader.epoch, loader.position) == (0, steps_per_epoch * 2)
    loader.next_step()  # fewer than a global batch left (or none): next epoch
    assert (loader.epoch, loader.position) == (1, 2)
    # Shuffled epochs are permutations: every sample exactly once per epoch.
    shuffled = MLMLoader(shards, "train", 32, 1, 1, 0, 1, seed=3)
    seen = []
    for _ in range(shuffled.samples_per_epoch):
        b = shuffled.next_step()[0]
        seen.append(tuple(torch.where(b["labels"] != -100, b["labels"], b["input_ids"])[0].tolist()))
    assert len(set(seen)) == n


def test_loader_resume(shards):
    a = MLMLoader(shards, "train", 32, 2, 2, 0, 1, seed=11)
    _steps(a, 3)
    state = json.loads(json.dumps(a.state_dict()))  # must survive JSON
    assert state["epoch"] == 0 and state["position"] == 12 and state["seed"] == 11
    expected = _steps(a, 4)
    b = MLMLoader(shards, "train", 32, 2, 2, 0, 1, seed=11)
    b.load_state_dict(state)
    for e, g in zip(expected, _steps(b, 4)):
        for me, mg in zip(e, g):
            assert torch.equal(me["input_ids"], mg["input_ids"]) and torch.equal(me["labels"], mg["labels"])
    with pytest.raises(InvalidValueError, match="seed 11 in the checkpoint != 12"):
        MLMLoader(shards, "train", 32, 2, 2, 0, 1, seed=12).load_state_dict(state)
    with pytest.raises(InvalidValueError, match="seq_len"):
        MLMLoader(shards, "train", 16, 2, 2, 0, 1, seed=11).load_state_dict(state)


def test_loader_errors(shards):
    n_valid = shards.num_tokens("valid")
    with pytest.raises(InvalidValueError, match=f"corpus split 'valid' in .* has {n_valid} tokens, fewer than one "
                                                f"sequence of 100000"):
        MLMLoader(shards, "valid", 100000, 1, 1, 0, 1, seed=0)
    with pytest.raises(InvalidValueError, match="fewer than one global batch"):
        MLMLoader(shards, "train", 32, 10000, 1, 0, 1, seed=0)
    with pytest.raises(InvalidValueError, match="split 'test' is not in"):
        MLMLoader(shards, "test", 32, 1, 1, 0, 1, seed=0)


def test_eval_batches(shards):
    one = eval_batches(shards, "valid", 32, 4, 3, 0, 1, seed=5)
    assert len(one) == 3 and one[0]["input_ids"].shape == (4, 32)
    again = eval_batches(shards, "valid", 32, 4, 3, 0, 1, seed=5)
    assert all(torch.equal(a["labels"], b["labels"]) for a, b in zip(one, again))
    ranks = [eval_batches(shards, "valid", 32, 2, 3, r, 2, seed=5) for r in range(2)]
    for b in range(3):
        assert torch.equal(one[b]["input_ids"], torch.cat([ranks[0][b]["input_ids"], ranks[1][b]["input_ids"]]))
    everything = eval_batches(shards, "valid", 32, 1, None, 0, 1, seed=5)
    assert len(everything) == shards.num_tokens("valid") // 30


# --------------------------------------------------------------------------------------------
# prepare_data.py and recipes

def _run(argv, capsys):
    rc = prepare_data.main(argv)
    return rc, capsys.readouterr()


def test_prepare_text_and_errors(corpus, tmp_path, capsys):
    out = tmp_path / "ds"
    rc, cap = _run(["--text", corpus, "--out", str(out), "--vocab-size", "200", "--valid-fraction", "0.05"], capsys)
    assert rc == 0, cap.err
    assert "train:" in cap.out and "valid:" in cap.out
    ds = TokenShards.open(str(out))
    assert ds.index["splits"]["valid"]["num_documents"] == 20 and ds.vocab_size == 200
    before = sorted(os.listdir(out))
    # Refuses a non-empty --out, leaves it as it was.
    rc, cap = _run(["--text", corpus, "--out", str(out), "--vocab-size", "200"], capsys)
    assert rc == 2 and cap.err.startswith("error: ") and "--overwrite" in cap.err
    assert sorted(os.listdir(out)) == before
    # Reusing the tokenizer, with --overwrite.
    rc, cap = _run(["--text", corpus, "--out", str(out), "--tokenizer", str(out / "tokenizer.model"),
                    "--overwrite"], capsys)
    assert rc == 0, cap.err
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("caf\u00e9 ok\n".encode("latin-1"))
    for path, what in ((tmp_path / "missing.txt", "does not exist"), (empty, "is empty"),
                       (latin1, "not valid UTF-8")):
        target = tmp_path / "never"
        rc, cap = _run(["--text", corpus, str(path), "--out", str(target), "--vocab-size", "200"], capsys)
        assert rc == 2 and str(path) in cap.err and what in cap.err, cap.err
        assert len(cap.err.strip().splitlines()) == 1
        assert not target.exists()


def test_prepare_hf_dataset(tmp_path, capsys):
    datasets = pytest.importorskip("datasets")
    datasets.Dataset.from_dict({"body": _corpus_lines(200, seed=4)}).save_to_disk(str(tmp_path / "hf"))
    rc, cap = _run(["--hf-dataset", str(tmp_path / "hf"), "--text-column", "nope", "--out", str(tmp_path / "x"),
                    "--vocab-size", "200"], capsys)
    assert rc == 2 and "no column 'nope'" in cap.err and "body" in cap.err
    rc, cap = _run(["--hf-dataset", str(tmp_path / "hf"), "--text-column", "body", "--out", str(tmp_path / "x"),
                    "--vocab-size", "200"], capsys)
    assert rc == 0, cap.err
    assert TokenShards.open(str(tmp_path / "x")).index["splits"]["train"]["num_documents"] == 198


def test_heldout_and_valid_chapters():
    held = bible_table.heldout_chapters()
    assert held == bible_table.heldout_chapters(seed=0, fraction=0.05)
    assert 50 <= len(held) <= 70 and held != bible_table.heldout_chapters(seed=1)
    assert {bible_table.BOOK_GENRE[b] for b, _ in held} == set(bible_table.GENRES)
    valid = bible_table.valid_chapters(seed=0, fraction=0.01, heldout=held)
    assert len(valid) == 12 and not valid & held
    assert len(bible_table.all_chapters()) == 1189 and len(bible_table.BOOK_GENRE) == 66


@pytest.mark.parametrize("recipe", ["bible-ny", "bible-en"])
def test_bible_recipe_excludes_heldout(recipe):
    splits, meta = bibles.bible_recipe(recipe)
    held = bible_table.heldout_chapters()
    valid = bible_table.valid_chapters(heldout=held)
    train_keys = {d.key[1:] for d in splits["train"]}
    assert train_keys and not train_keys & held and not train_keys & valid
    assert {d.key[1:] for d in splits["valid"]} == valid
    assert {tuple(c) for c in meta["heldout"]["chapters"]} == held
    n_sources = 1 if recipe == "bible-ny" else len(bible_table.EN_TRANSLATIONS)
    assert len(splits["train"]) >= n_sources * (1189 - len(held) - len(valid)) - 2


def test_verses_align():
    ny = bibles.chichewa_verses()
    en = bibles.english_verses("kjv")
    assert len(ny) == 31104 and len(en) == 31102
    assert en[(1, 1, 1)] == "In the beginning God created the heaven and the earth."
    assert ny[(1, 1, 1)].startswith("Pachiyambi Mulungu")
    assert len(set(ny) & set(en)) > 31000
    assert bible_table.BOOK_GENRE[1] == "law" and bible_table.BOOK_GENRE[40] == "gospels"
    assert bible_table.BOOK_GENRE[66] == "letters" and bible_table.book_name(19) == "Psalms"


@pytest.mark.parametrize("recipe,word", [("bible-ny", "Mulungu"), ("bible-en", "God")])
def test_prepare_bible_recipe(recipe, word, tmp_path, capsys):
    out = tmp_path / recipe
    rc, cap = _run(["--recipe", recipe, "--out", str(out), "--vocab-size", "300", "--max-chars", "60000"], capsys)
    assert rc == 0, cap.err
    ds = TokenShards.open(str(out))
    assert set(ds.splits) == {"train", "valid"} and ds.index["meta"]["recipe"] == recipe
    assert 0 < ds.index["meta"]["chars"]["train"] <= 60000
    text = ds.tokenizer().decode(np.asarray(ds.tokens("train")[:2000]).tolist())
    assert word in text
