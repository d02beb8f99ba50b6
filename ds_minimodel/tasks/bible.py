"""Offline stand-in tasks on the aligned English and Chichewa Bibles.

XNLI / PAWS-X / MLQA do not ship offline and none covers Chichewa, so the transfer pipeline
(fine-tune on English, swap in Chichewa embeddings, evaluate zero-shot) is exercised on:

- `verse_genre_task`: the genre of a verse's book (law, history, poetry, prophets, gospels,
  letters: `GENRES`), 6 classes. Train and validation are English verses outside the held-out
  chapters; the test sets are the held-out chapters' verses in English *and* Chichewa with the
  same verse keys in the same order, so the two accuracies are a paired comparison.
- `verse_retrieval_pairs`: English <-> Chichewa verse pairs from the held-out chapters, for
  bitext retrieval with pooled sentence embeddings (`metrics.retrieval_metrics`).

The held-out chapters are `recipes.heldout_chapters(HELDOUT_SEED, HELDOUT_FRACTION)`, the same
chapters every Bible corpus recipe drops, so no test verse is seen in pretraining, adaptation
or fine-tuning. `seed` only changes which training verses are sampled and which chapters are
the validation chapters; it never moves the test set.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache

from ds_minimodel.data.recipes import (BOOK_GENRE, GENRES, HELDOUT_FRACTION, HELDOUT_SEED, all_chapters,
                                       chichewa_verses, english_verses, heldout_chapters)
from ds_minimodel.errors import InvalidValueError
from ds_minimodel.tasks.formats import ClassificationExample, TaskData

Key = tuple[int, int, int]

# Caps chosen so that fine-tuning a small encoder on CPU takes minutes: 6 x 1,500 = 9,000
# training verses (~35 tokens each) is ~300k tokens an epoch. Capping per class also balances
# the classes (letters, the smallest, has 3,048 non-held-out verses; history 6,700), so the
# classifier cannot win by predicting the largest genre.
MAX_TRAIN_PER_CLASS = 1500
MAX_VALIDATION_PER_CLASS = 200
VALIDATION_CHAPTER_FRACTION = 0.05
MAX_RETRIEVAL_PAIRS = 1000


def verse_id(key: Key) -> str:
    """"book.chapter.verse", e.g. "19.23.1" for Psalm 23:1."""
    return "{}.{}.{}".format(*key)


def _rank(salt: str, seed: int, *parts: int) -> bytes:
    # Stable across machines and Python versions (unlike hash()).
    return hashlib.sha256(f"{salt}:{seed}:{':'.join(map(str, parts))}".encode()).digest()


@lru_cache(maxsize=1)
def _task_heldout() -> frozenset[tuple[int, int]]:
    return frozenset(heldout_chapters(HELDOUT_SEED, HELDOUT_FRACTION))


def genre_validation_chapters(seed: int = 0, fraction: float = VALIDATION_CHAPTER_FRACTION) -> set[tuple[int, int]]:
    """Chapters whose verses form the task's validation split: `fraction` of each genre's
    non-held-out chapters. Whole chapters, not random verses, so neighbouring verses (which
    repeat phrases) do not straddle train and validation."""
    heldout = _task_heldout()
    chosen: set[tuple[int, int]] = set()
    for genre in GENRES:
        chapters = [bc for bc in all_chapters() if BOOK_GENRE[bc[0]] == genre and bc not in heldout]
        chapters.sort(key=lambda bc: _rank("genre-valid", seed, *bc))
        chosen.update(chapters[:max(1, round(fraction * len(chapters)))])
    return chosen


def class_counts(examples: list[ClassificationExample], label_names: tuple[str, ...]) -> dict[str, int]:
    counts = Counter(ex.label for ex in examples)
    return {name: counts.get(i, 0) for i, name in enumerate(label_names)}


def majority_rate(examples: list[ClassificationExample]) -> float:
    """Accuracy of always predicting the most frequent label of `examples` (the chance level)."""
    if not examples:
        return 0.0
    return max(Counter(ex.label for ex in examples).values()) / len(examples)


def _sample_per_class(keys: list[Key], cap: int | None, salt: str, seed: int) -> list[Key]:
    # A seeded hash rank rather than random.sample: the same sample on every Python version.
    by_genre: dict[str, list[Key]] = {g: [] for g in GENRES}
    for key in keys:
        by_genre[BOOK_GENRE[key[0]]].append(key)
    out: list[Key] = []
    for genre in GENRES:
        ks = sorted(by_genre[genre], key=lambda k: _rank(salt, seed, *k))
        out.extend(ks if cap is None else ks[:cap])
    return sorted(out)


def verse_genre_task(seed: int = 0, translation: str = "kjv", *,
                     max_train_per_class: int | None = MAX_TRAIN_PER_CLASS,
                     max_validation_per_class: int | None = MAX_VALIDATION_PER_CLASS,
                     target_language: str = "ny") -> TaskData:
    """Verse -> book genre (6 classes): English train/validation, paired en/ny test sets.

    - train: English verses of non-held-out, non-validation chapters, at most
      `max_train_per_class` per genre (sampled with `seed`; None keeps all);
    - validation: English verses of `genre_validation_chapters(seed)`, capped likewise;
    - test: every verse of the held-out chapters present in both Bibles, except verses whose
      English text occurs verbatim outside the held-out chapters (formulas such as "And the
      LORD spake unto Moses, saying," would otherwise be test items seen in training).
      `tests["en"]` and `tests["ny"]` hold the same verse ids in the same order.

    `TaskData.test` is the target-language (Chichewa) test set; `meta` records the class
    counts per split and the chance levels.
    """
    if target_language != "ny":
        raise InvalidValueError(f"target_language {target_language!r}: only 'ny' (Chichewa) is available offline")
    for name, cap in (("max_train_per_class", max_train_per_class),
                      ("max_validation_per_class", max_validation_per_class)):
        if cap is not None and cap < 1:
            raise InvalidValueError(f"{name} {cap} must be positive (or None for no cap)")
    en = english_verses(translation)
    ny = chichewa_verses()
    heldout = _task_heldout()
    valid_chapters = genre_validation_chapters(seed)

    outside = set(en[k] for k in en if k[:2] not in heldout)
    test_keys = sorted(k for k in en if k[:2] in heldout and k in ny and en[k] not in outside)
    dropped = sum(1 for k in en if k[:2] in heldout and k in ny and en[k] in outside)
    train_pool = [k for k in en if k[:2] not in heldout and k[:2] not in valid_chapters]
    valid_pool = [k for k in en if k[:2] in valid_chapters]

    train_keys = _sample_per_class(train_pool, max_train_per_class, "genre-train", seed)
    valid_keys = _sample_per_class(valid_pool, max_validation_per_class, "genre-valid-sample", seed)

    label = {g: i for i, g in enumerate(GENRES)}

    def make(keys: list[Key], text: dict[Key, str]) -> list[ClassificationExample]:
        return [ClassificationExample(text[k], None, label[BOOK_GENRE[k[0]]], verse_id(k)) for k in keys]

    train, validation = make(train_keys, en), make(valid_keys, en)
    test_en, test_ny = make(test_keys, en), make(test_keys, ny)
    meta = {
        "translation": translation,
        "seed": seed,
        "heldout": {"seed": HELDOUT_SEED, "fraction": HELDOUT_FRACTION, "chapters": len(heldout)},
        "validation_chapters": len(valid_chapters),
        "caps": {"train_per_class": max_train_per_class, "validation_per_class": max_validation_per_class},
        "test_dropped_duplicates": dropped,
        "class_counts": {"train": class_counts(train, GENRES), "validation": class_counts(validation, GENRES),
                         "test": class_counts(test_en, GENRES)},
        "sizes": {"train": len(train), "validation": len(validation), "test": len(test_en)},
        # Chance levels on the test set: always answering the most frequent class, and uniform guessing.
        "chance": {"majority": majority_rate(test_en), "uniform": 1 / len(GENRES)},
    }
    return TaskData("verse-genre", len(GENRES), GENRES, train, validation, test_ny, target_language, "en",
                    {"en": test_en, target_language: test_ny}, meta)


@dataclass(frozen=True)
class VersePair:
    """One aligned verse: `id` is "book.chapter.verse"."""
    id: str
    english: str
    chichewa: str


def verse_retrieval_pairs(split: str = "heldout", translation: str = "kjv", *,
                          max_pairs: int | None = MAX_RETRIEVAL_PAIRS, seed: int = 0) -> list[VersePair]:
    """Aligned (English, Chichewa) verses for bitext retrieval, sorted by verse.

    `split="heldout"`: verses of the held-out chapters (never in any training corpus);
    `split="train"`: verses of the other chapters (they are in the adaptation corpora: for
    development only). Only chapters with the same verse count in both Bibles are used (two of
    1,189 differ, where the alignment may be off), and a pair is dropped when its English or
    Chichewa text already occurred in an earlier pair, so every query has exactly one correct
    answer. At most `max_pairs` pairs (a `seed`-ed sample, None for all).
    """
    if split not in ("heldout", "train"):
        raise InvalidValueError(f"retrieval split {split!r} is not 'heldout' or 'train'")
    if max_pairs is not None and max_pairs < 2:
        raise InvalidValueError(f"max_pairs {max_pairs} must be at least 2 (or None for all)")
    en = english_verses(translation)
    ny = chichewa_verses()
    heldout = _task_heldout()
    en_count = Counter(k[:2] for k in en)
    ny_count = Counter(k[:2] for k in ny)
    pairs: list[VersePair] = []
    seen_en: set[str] = set()
    seen_ny: set[str] = set()
    for key in sorted(en):
        chapter = key[:2]
        if (chapter in heldout) != (split == "heldout") or key not in ny or en_count[chapter] != ny_count[chapter]:
            continue
        if en[key] in seen_en or ny[key] in seen_ny:
            continue
        seen_en.add(en[key])
        seen_ny.add(ny[key])
        pairs.append(VersePair(verse_id(key), en[key], ny[key]))
    if max_pairs is not None and len(pairs) > max_pairs:
        pairs = sorted(pairs, key=lambda p: _rank("retrieval", seed, *map(int, p.id.split("."))))[:max_pairs]
        pairs.sort(key=lambda p: tuple(map(int, p.id.split("."))))
    return pairs
