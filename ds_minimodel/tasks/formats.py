"""Task examples, and loaders for the released XNLI, PAWS-X and MLQA files (read locally).

None of the three ships offline, so nothing here downloads: `load_task` reads the files as
their authors released them, and `from_hf_datasets` reads a Hugging Face copy only from the
local cache (or a `save_to_disk` directory) with downloads switched off.

Layouts (`load_task(name, path, language, split)` accepts the file itself, or a directory
that holds the released tree or any level of it):

- XNLI (Conneau et al. 2018). Validation/test: `XNLI-1.0/xnli.{dev,test}.tsv`, one TSV for
  all 15 languages with a header (`language`, `gold_label`, `sentence1`, `sentence2`,
  `pairID`, ...); rows are filtered by `language`. Train: the machine-translated MultiNLI of
  XNLI-MT, `XNLI-MT-1.0/multinli/multinli.train.<lang>.tsv`, columns `premise`, `hypo`,
  `label`, where contradiction is spelled `contradictory`. Labels follow Hugging Face's
  `xnli`: entailment=0, neutral=1, contradiction=2.
- PAWS-X (Yang et al. 2019): `x-final/<lang>/{train,dev_2k,test_2k}.tsv`, columns `id`,
  `sentence1`, `sentence2`, `label` (1 = paraphrase). English train is `train.tsv`; the
  other languages' (machine-translated) train is `translated_train.tsv`.
- MLQA (Lewis et al. 2020): SQuAD v1.1 JSON (`data[].paragraphs[].qas[].answers[]`) in
  `MLQA_V1/{dev,test}/{dev,test}-context-<c>-question-<q>.json`. MLQA has no train split: the
  standard zero-shot setting trains on English SQuAD v1.1 (`train-v1.1.json`), which
  `split="train"` looks for; English validation falls back to SQuAD's `dev-v1.1.json` when
  there is no MLQA English dev file.

All TSVs are read with no quoting (one physical line per row, fields split on tabs): the
released files contain unbalanced quotes, which a CSV reader's default quoting would merge
across lines (Hugging Face's scripts use `csv.QUOTE_NONE` for the same reason). A malformed
row raises `InvalidValueError` naming the file and line; `skip_bad_rows=True` drops such
rows instead and warns once per file with the count (the machine-translated PAWS-X train
files are known to contain a few rows with missing or invalid labels).
"""

from __future__ import annotations

import contextlib
import json
import os
import warnings
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

from ds_minimodel.errors import InvalidValueError, MissingFileError, UserError

# --------------------------------------------------------------------------------------------
# Example types


@dataclass(frozen=True)
class ClassificationExample:
    """One sentence (`text_b` None) or sentence-pair example with an integer label."""
    text_a: str
    text_b: str | None
    label: int
    id: str


@dataclass(frozen=True)
class QAExample:
    """One extractive-QA question; `answers` are SQuAD dicts {"text", "answer_start"} where
    `answer_start` is a character offset into `context` (several for evaluation sets)."""
    id: str
    context: str
    question: str
    answers: list[dict]
    title: str = ""


@dataclass
class TaskData:
    """A task's splits and label space.

    `num_labels` is the number of classes, or "qa" for extractive QA (then `label_names` is
    empty). `language` is the language of `test`; `train_language` that of train/validation
    when the task is cross-lingual (zero-shot transfer). `tests` maps a language to its test
    set and always contains `test` under `language`: a task with paired test sets (the same
    examples in two languages) lists both.
    """
    name: str
    num_labels: int | str
    label_names: tuple[str, ...]
    train: list
    validation: list
    test: list
    language: str
    train_language: str | None = None
    tests: dict[str, list] = field(default_factory=dict)
    meta: dict = field(default_factory=dict)
    # Builds the test set of a language missing from `tests` on demand (the Bible tasks: any
    # language of their table); None where the test languages are fixed.
    test_builder: Callable[[str], list] | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.tests:
            self.tests = {self.language: self.test}
        assert self.tests.get(self.language) is self.test, "tests[language] must be test"
        if self.train_language is None:
            self.train_language = self.language

    def test_in(self, language: str) -> list:
        """The test set in `language` (e.g. a language pack's), built on demand where the task can;
        a user error naming the languages it has otherwise."""
        if language not in self.tests and self.test_builder is not None:
            try:
                self.tests[language] = self.test_builder(language)
            except UserError as exc:  # e.g. a language without a Bible, or its package not installed
                raise type(exc)(f"task {self.name} has no test set in {language!r}: {exc}") from None
        if language not in self.tests:
            raise UserError(f"task {self.name} has no test set in {language!r} (has: {', '.join(self.tests)})")
        return self.tests[language]

    @property
    def is_qa(self) -> bool:
        return self.num_labels == "qa"


# --------------------------------------------------------------------------------------------
# Task constants

XNLI_LABELS = ("entailment", "neutral", "contradiction")  # Hugging Face `xnli` ClassLabel order
PAWSX_LABELS = ("not_paraphrase", "paraphrase")
XNLI_LANGUAGES = ("ar", "bg", "de", "el", "en", "es", "fr", "hi", "ru", "sw", "th", "tr", "ur", "vi", "zh")
PAWSX_LANGUAGES = ("de", "en", "es", "fr", "ja", "ko", "zh")
MLQA_LANGUAGES = ("ar", "de", "en", "es", "hi", "vi", "zh")

TASKS = ("xnli", "paws-x", "mlqa")
_TASK_ALIASES = {"xnli": "xnli", "paws-x": "paws-x", "pawsx": "paws-x", "paws_x": "paws-x", "mlqa": "mlqa",
                 "squad": "mlqa"}
SPLITS = ("train", "validation", "test")
_SPLIT_ALIASES = {"train": "train", "validation": "validation", "valid": "validation", "dev": "validation",
                  "test": "test"}

# XNLI-MT spells contradiction "contradictory"; accept either spelling in either file.
_XNLI_LABEL_IDS = {"entailment": 0, "neutral": 1, "contradiction": 2, "contradictory": 2}


def task_name(name: str) -> str:
    """Canonical task name (`xnli`, `paws-x`, `mlqa`) of `name` or an alias."""
    try:
        return _TASK_ALIASES[name.lower()]
    except KeyError:
        raise InvalidValueError(f"task {name!r} is not one of {', '.join(TASKS)}") from None


def split_name(split: str) -> str:
    """Canonical split name (`train`, `validation`, `test`); `dev`/`valid` mean validation."""
    try:
        return _SPLIT_ALIASES[split.lower()]
    except KeyError:
        raise InvalidValueError(f"split {split!r} is not one of {', '.join(SPLITS)} (or dev)") from None


# --------------------------------------------------------------------------------------------
# Reading helpers


class _BadRows:
    """Raise on the first malformed row, or (skip=True) count them and warn once at the end."""

    def __init__(self, path: str, skip: bool, hint: str = ""):
        self.path, self.skip, self.hint = path, skip, hint
        self.count = 0
        self.first: str | None = None

    def __call__(self, where: str, msg: str) -> None:
        if not self.skip:
            raise InvalidValueError(f"{self.path}: {where}: {msg}{self.hint}")
        self.count += 1
        if self.first is None:
            self.first = f"{where}: {msg}"

    def finish(self) -> None:
        if self.count:
            warnings.warn(f"{self.path}: skipped {self.count} malformed row(s) (first: {self.first})", stacklevel=3)


def _check_file(path: str, what: str) -> None:
    if not os.path.exists(path):
        raise MissingFileError(f"{what} file {path} does not exist")
    if not os.path.isfile(path):
        raise InvalidValueError(f"{what} file {path} is not a regular file")


def _decode(raw: bytes, path: str, lineno: int) -> str:
    try:
        return raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidValueError(f"{path}: line {lineno} is not valid UTF-8 (byte {exc.start} of the line)") from None


def _read_tsv(path: str, required: Sequence[str], what: str,
              bad: _BadRows) -> Iterator[tuple[int, dict[str, str]]]:
    """(line number, {column: field}) for each non-blank row of a TSV with a header line.

    Read in binary and split on b"\\n" only: text-mode iteration would also split on a lone
    "\\r" (and str.splitlines on U+2028 etc.), which occur inside sentences of real files.
    """
    _check_file(path, what)
    with open(path, "rb") as f:
        first = f.readline()
        if not first.strip():
            raise InvalidValueError(f"{path}: line 1: expected a header line with columns "
                                    f"{', '.join(required)} but the file {'is empty' if not first else 'starts blank'}")
        header = _decode(first, path, 1).rstrip("\r\n").split("\t")
        missing = [c for c in required if c not in header]
        if missing:
            raise InvalidValueError(f"{path}: line 1 (header) lacks column(s) {', '.join(missing)} of the {what} "
                                    f"format (it has: {', '.join(header)})")
        index = {c: header.index(c) for c in required}
        for lineno, raw in enumerate(f, start=2):
            line = _decode(raw, path, lineno).rstrip("\r\n")
            if not line.strip():
                continue
            fields = line.split("\t")
            if len(fields) != len(header):
                bad(f"line {lineno}", f"{len(fields)} tab-separated fields, the header has {len(header)}")
                continue
            yield lineno, {c: fields[i] for c, i in index.items()}


def _text(row: dict[str, str], column: str, lineno: int, bad: _BadRows) -> str | None:
    value = row[column].strip()
    if not value:
        bad(f"line {lineno}", f"field {column!r} is empty")
        return None
    return value


# --------------------------------------------------------------------------------------------
# XNLI


def read_xnli_tsv(path: str, language: str | None = None, *,
                  skip_bad_rows: bool = False) -> list[ClassificationExample]:
    """Examples of an XNLI-1.0 `xnli.{dev,test}.tsv` (rows of `language` only), or of an
    XNLI-MT `multinli.train.<lang>.tsv` (every row; `language` is not checked, the file is
    one language). The format is recognised from the header."""
    _check_file(path, "XNLI")
    with open(path, "rb") as f:
        header = _decode(f.readline(), path, 1).rstrip("\r\n").split("\t")
    bad = _BadRows(path, skip_bad_rows, " (pass skip_bad_rows=True to drop such rows)")
    examples = []
    if "gold_label" in header or "language" in header:
        if language is None:
            raise InvalidValueError(f"{path} holds all XNLI languages: give the language to read")
        seen: set[str] = set()
        for lineno, row in _read_tsv(path, ("language", "gold_label", "sentence1", "sentence2", "pairID"),
                                     "XNLI-1.0", bad):
            lang = row["language"].strip()
            seen.add(lang)
            if lang != language:
                continue
            label = _XNLI_LABEL_IDS.get(row["gold_label"].strip())
            if label is None:
                bad(f"line {lineno}", f"gold_label {row['gold_label']!r} is not one of {', '.join(XNLI_LABELS)}")
                continue
            a, b = _text(row, "sentence1", lineno, bad), _text(row, "sentence2", lineno, bad)
            if a is None or b is None:
                continue
            examples.append(ClassificationExample(a, b, label, f"{lang}-{row['pairID'].strip() or lineno}"))
        if not examples and not bad.count:
            raise InvalidValueError(f"{path} has no rows for language {language!r} "
                                    f"(languages present: {', '.join(sorted(seen)) or 'none'})")
    else:
        for lineno, row in _read_tsv(path, ("premise", "hypo", "label"), "XNLI-MT train", bad):
            label = _XNLI_LABEL_IDS.get(row["label"].strip())
            if label is None:
                bad(f"line {lineno}", f"label {row['label']!r} is not one of entailment, neutral, contradictory")
                continue
            a, b = _text(row, "premise", lineno, bad), _text(row, "hypo", lineno, bad)
            if a is None or b is None:
                continue
            examples.append(ClassificationExample(a, b, label, f"{language or 'mt'}-train-{lineno - 1}"))
    bad.finish()
    return examples


# --------------------------------------------------------------------------------------------
# PAWS-X


def read_pawsx_tsv(path: str, *, skip_bad_rows: bool = False) -> list[ClassificationExample]:
    """Examples of one PAWS-X TSV (`train.tsv`, `translated_train.tsv`, `dev_2k.tsv`, `test_2k.tsv`)."""
    bad = _BadRows(path, skip_bad_rows, " (pass skip_bad_rows=True to drop such rows; the released "
                   "translated_train.tsv files contain a few)")
    examples = []
    for lineno, row in _read_tsv(path, ("id", "sentence1", "sentence2", "label"), "PAWS-X", bad):
        label = row["label"].strip()
        if label not in ("0", "1"):
            bad(f"line {lineno}", f"label {row['label']!r} is not 0 or 1")
            continue
        a, b = _text(row, "sentence1", lineno, bad), _text(row, "sentence2", lineno, bad)
        if a is None or b is None:
            continue
        examples.append(ClassificationExample(a, b, int(label), row["id"].strip() or str(lineno - 1)))
    bad.finish()
    return examples


# --------------------------------------------------------------------------------------------
# MLQA / SQuAD v1.1 JSON


def read_squad_json(path: str, *, skip_bad_rows: bool = False) -> list[QAExample]:
    """Examples of a SQuAD-v1.1-format JSON file (MLQA's dev/test files, SQuAD's train)."""
    _check_file(path, "SQuAD/MLQA JSON")
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except UnicodeDecodeError as exc:
        raise InvalidValueError(f"{path} is not valid UTF-8 (byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise InvalidValueError(f"{path}: line {exc.lineno} column {exc.colno}: invalid JSON ({exc.msg})") from None
    bad = _BadRows(path, skip_bad_rows, " (pass skip_bad_rows=True to drop such questions)")

    def need(value, kind, where: str):
        if not isinstance(value, kind) or isinstance(value, bool):
            names = {str: "a string", list: "a list", dict: "an object", int: "an integer"}
            raise InvalidValueError(f"{path}: {where} is not {names[kind]} (got {type(value).__name__}); "
                                    "expected SQuAD v1.1 format data[].paragraphs[].qas[].answers[]")
        return value

    if not isinstance(doc, dict) or "data" not in doc:
        raise InvalidValueError(f"{path}: top level has no 'data' list; expected SQuAD v1.1 format "
                                "{\"data\": [{\"title\", \"paragraphs\": [{\"context\", \"qas\": [...]}]}]}")
    examples = []
    for i, article in enumerate(need(doc["data"], list, "data")):
        where = f"data[{i}]"
        need(article, dict, where)
        title = article.get("title", "")
        for j, para in enumerate(need(article.get("paragraphs"), list, f"{where}.paragraphs")):
            pw = f"{where}.paragraphs[{j}]"
            need(para, dict, pw)
            context = need(para.get("context"), str, f"{pw}.context")
            for k, qa in enumerate(need(para.get("qas"), list, f"{pw}.qas")):
                qw = f"{pw}.qas[{k}]"
                need(qa, dict, qw)
                qid = need(qa.get("id"), str, f"{qw}.id")
                question = need(qa.get("question"), str, f"{qw}.question")
                answers = []
                for m, ans in enumerate(need(qa.get("answers"), list, f"{qw}.answers")):
                    aw = f"{qw}.answers[{m}]"
                    need(ans, dict, aw)
                    text = need(ans.get("text"), str, f"{aw}.text")
                    start = need(ans.get("answer_start"), int, f"{aw}.answer_start")
                    if not 0 <= start <= len(context) - len(text):
                        bad(aw, f"answer_start {start} + len(text) {len(text)} is outside the context "
                                f"({len(context)} characters)")
                        break
                    answers.append({"text": text, "answer_start": start})
                else:
                    if not answers:
                        bad(qw, "has no answers (SQuAD v1.1 questions all have one)")
                        continue
                    examples.append(QAExample(qid, context, question.strip(), answers, str(title)))
    bad.finish()
    return examples


# --------------------------------------------------------------------------------------------
# Dispatch


def _candidates(task: str, root: str, language: str, split: str, question_language: str | None) -> list[str]:
    if task == "xnli":
        if split == "train":
            name = f"multinli.train.{language}.tsv"
            rel = [name, os.path.join("multinli", name), os.path.join("XNLI-MT-1.0", "multinli", name)]
        else:
            name = f"xnli.{'dev' if split == 'validation' else 'test'}.tsv"
            rel = [name, os.path.join("XNLI-1.0", name)]
    elif task == "paws-x":
        names = {"train": ["train.tsv", "translated_train.tsv"], "validation": ["dev_2k.tsv"],
                 "test": ["test_2k.tsv"]}[split]
        rel = [os.path.join(*parts, n) for parts in ((), (language,), ("x-final", language)) for n in names]
    else:
        if split == "train":
            rel = [os.path.join(*d, "train-v1.1.json") for d in ((), ("squad",), ("SQuAD",))]
        else:
            s = "dev" if split == "validation" else "test"
            name = f"{s}-context-{language}-question-{question_language or language}.json"
            rel = [name, os.path.join(s, name), os.path.join("MLQA_V1", s, name)]
            if split == "validation" and language == "en" and question_language in (None, "en"):
                # English validation may also be SQuAD v1.1's own dev set, next to its train file.
                rel += [os.path.join(*d, "dev-v1.1.json") for d in ((), ("squad",), ("SQuAD",))]
    return [os.path.join(root, r) for r in rel]


def task_file(name: str, root: str, language: str, split: str, question_language: str | None = None) -> str:
    """The released file of (task, language, split) under directory `root` (or `root` itself
    when it is a file); MissingFileError lists the places looked at."""
    task, split = task_name(name), split_name(split)
    if os.path.isfile(root):
        return root
    if not os.path.isdir(root):
        raise MissingFileError(f"{task} data path {root} does not exist")
    tried = _candidates(task, root, language, split, question_language)
    for path in tried:
        if os.path.isfile(path):
            return path
    raise MissingFileError(f"no {task} {split} file for language {language!r} under {root} (looked for: "
                           f"{', '.join(os.path.relpath(p, root) for p in tried)})")


def load_task(name: str, path: str, language: str, split: str, *, question_language: str | None = None,
              skip_bad_rows: bool = False) -> list[ClassificationExample] | list[QAExample]:
    """Examples of one split of XNLI, PAWS-X or MLQA from the released files.

    `path` is the file itself or a directory holding the released layout (see the module doc).
    `language` filters XNLI-1.0 rows and picks the PAWS-X folder, XNLI-MT file or MLQA context
    language; `question_language` (MLQA only) defaults to `language`.
    """
    task, split = task_name(name), split_name(split)
    if question_language is not None and task != "mlqa":
        raise InvalidValueError(f"question_language is only for mlqa (got task {task})")
    file = task_file(task, path, language, split, question_language)
    if task == "xnli":
        return read_xnli_tsv(file, language, skip_bad_rows=skip_bad_rows)
    if task == "paws-x":
        return read_pawsx_tsv(file, skip_bad_rows=skip_bad_rows)
    return read_squad_json(file, skip_bad_rows=skip_bad_rows)


def task_data(name: str, path: str, test_languages: Sequence[str] | str, train_language: str = "en", *,
              skip_bad_rows: bool = False) -> TaskData:
    """Train and validation in `train_language`, a test set per language of `test_languages`
    (the first is `TaskData.test`): the zero-shot cross-lingual transfer setting."""
    task = task_name(name)
    langs = [test_languages] if isinstance(test_languages, str) else list(test_languages)
    if not langs:
        raise InvalidValueError("task_data needs at least one test language")
    kw = {"skip_bad_rows": skip_bad_rows}
    train = load_task(task, path, train_language, "train", **kw)
    validation = load_task(task, path, train_language, "validation", **kw)
    tests = {lang: load_task(task, path, lang, "test", **kw) for lang in langs}
    if task == "mlqa":
        num_labels, labels = "qa", ()
    else:
        labels = XNLI_LABELS if task == "xnli" else PAWSX_LABELS
        num_labels = len(labels)
    return TaskData(task, num_labels, labels, train, validation, tests[langs[0]], langs[0], train_language,
                    tests, {"source": os.path.abspath(path)})


# --------------------------------------------------------------------------------------------
# Hugging Face `datasets`, strictly offline

_HF_IDS = {"xnli": "facebook/xnli", "paws-x": "google-research-datasets/paws-x", "mlqa": "facebook/mlqa"}


@contextlib.contextmanager
def hf_offline():
    """Switch `datasets` and `huggingface_hub` to offline mode for the duration, then restore.

    Both read their offline flags from the environment at import, so the module flags are
    set as well as the variables (importing here, before the switch, leaves the process's
    own setting in place afterwards)."""
    import datasets
    import huggingface_hub.constants as hub_constants

    saved_env = {k: os.environ.get(k) for k in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE")}
    os.environ.update(HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1")
    try:
        saved = (datasets.config.HF_HUB_OFFLINE, datasets.config.HF_DATASETS_OFFLINE, hub_constants.HF_HUB_OFFLINE)
        datasets.config.HF_HUB_OFFLINE = datasets.config.HF_DATASETS_OFFLINE = True
        hub_constants.HF_HUB_OFFLINE = True
        try:
            yield datasets
        finally:
            datasets.config.HF_HUB_OFFLINE, datasets.config.HF_DATASETS_OFFLINE, hub_constants.HF_HUB_OFFLINE = saved
    finally:
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _from_hf_rows(task: str, rows, where: str, skip_bad_rows: bool):
    bad = _BadRows(where, skip_bad_rows, " (pass skip_bad_rows=True to drop such rows)")
    out: list = []
    cols = set(rows.column_names)
    need = {"xnli": {"premise", "hypothesis", "label"}, "paws-x": {"sentence1", "sentence2", "label"},
            "mlqa": {"id", "context", "question", "answers"}}[task]
    if not need <= cols:
        raise InvalidValueError(f"{where} lacks column(s) {', '.join(sorted(need - cols))} of Hugging Face's "
                                f"{task} (it has: {', '.join(sorted(cols))})")
    num_labels = {"xnli": 3, "paws-x": 2}.get(task)
    for i, row in enumerate(rows):
        if task == "mlqa":
            ans = row["answers"]
            answers = [{"text": t, "answer_start": int(s)} for t, s in zip(ans["text"], ans["answer_start"])]
            if not answers:
                bad(f"row {i}", "has no answers")
                continue
            out.append(QAExample(str(row["id"]), row["context"], row["question"].strip(), answers,
                                 str(row.get("title") or "")))
            continue
        label = row["label"]
        if not isinstance(label, int) or not 0 <= label < num_labels:
            bad(f"row {i}", f"label {label!r} is not in 0..{num_labels - 1}")
            continue
        a, b = (row["premise"], row["hypothesis"]) if task == "xnli" else (row["sentence1"], row["sentence2"])
        if not a or not b or not a.strip() or not b.strip():
            bad(f"row {i}", "has an empty sentence")
            continue
        out.append(ClassificationExample(a.strip(), b.strip(), label, str(row.get("id", i))))
    bad.finish()
    return out


def from_hf_datasets(name: str, language: str, split: str, *, saved: str | None = None,
                     question_language: str | None = None, cache_dir: str | None = None,
                     skip_bad_rows: bool = False) -> list[ClassificationExample] | list[QAExample]:
    """One split from a Hugging Face copy of the task, never downloading.

    `saved`: a directory written by `DatasetDict.save_to_disk` (or `Dataset.save_to_disk` of
    the split). Otherwise the hub copy (`facebook/xnli`, `google-research-datasets/paws-x`,
    `facebook/mlqa` config `mlqa.<context>.<question>`; MLQA train is `rajpurkar/squad`) is
    read from the local cache only, with `HF_DATASETS_OFFLINE`/`HF_HUB_OFFLINE` forced on; if
    it is not cached this raises UserError saying how to use the released files instead.
    """
    task, split = task_name(name), split_name(split)
    with hf_offline() as datasets:
        if saved is not None:
            if not os.path.isdir(saved):
                raise MissingFileError(f"saved dataset directory {saved} does not exist")
            try:
                ds = datasets.load_from_disk(saved)
            except (FileNotFoundError, ValueError) as exc:
                raise InvalidValueError(f"{saved} is not a dataset written by save_to_disk ({exc})") from None
            if isinstance(ds, datasets.DatasetDict):
                if split not in ds:
                    raise InvalidValueError(f"saved dataset {saved} has splits {', '.join(ds)}, not {split!r}")
                ds = ds[split]
            where = f"{saved} [{split}]"
        else:
            if task == "mlqa" and split == "train":
                hub_id, config = "rajpurkar/squad", None
            elif task == "mlqa":
                hub_id, config = _HF_IDS[task], f"mlqa.{language}.{question_language or language}"
            else:
                hub_id, config = _HF_IDS[task], language
            where = f"{hub_id} ({config}) [{split}]"
            try:
                ds = datasets.load_dataset(hub_id, config, split=split, cache_dir=cache_dir)
            except Exception as exc:  # noqa: BLE001 - datasets raises many types for "not cached"
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                raise UserError(
                    f"{task} {split} ({hub_id}, config {config}) is not in the local Hugging Face datasets cache and "
                    f"downloads are disabled ({type(exc).__name__}: {first[:160]}); download the released files "
                    f"and use load_task('{task}', PATH, '{language}', '{split}'), or pass saved= a save_to_disk "
                    "directory") from None
        return _from_hf_rows(task, ds, where, skip_bad_rows)
