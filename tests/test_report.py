"""pipeline_report on a synthetic finished pipeline directory: the table's numbers come from
transfer.json and each run's metrics.jsonl, and the paired differences agree with numpy."""

import json
import re

import numpy as np
import pytest

from ds_minimodel.analysis.report import pipeline_report

METHODS = ("full", "minijoint", "minipost")


def _write_run(run, seconds_per_step, flops_per_step, steps=30):
    run.mkdir(parents=True)
    with open(run / "metrics.jsonl", "w") as f:
        for s in range(10, steps + 1, 10):
            f.write(json.dumps({"kind": "train", "step": s, "loss": 8.0 - s / 10, "train_seconds": s * seconds_per_step,
                                "flops": s * flops_per_step}) + "\n")
        f.write(json.dumps({"kind": "eval", "step": steps, "valid_final_loss": 6.5}) + "\n")


@pytest.fixture
def pipeline_dir(tmp_path):
    rng = np.random.default_rng(1)
    n = 400
    correct = {m: rng.random(n) < p for m, p in zip(METHODS, (0.30, 0.29, 0.26))}
    control = rng.random(n) < 0.22
    packs = {}
    for i, m in enumerate(METHODS):
        _write_run(tmp_path / f"adapt-{m}", seconds_per_step=(3.0, 1.0, 1.2)[i], flops_per_step=(9e9, 3e9, 4e9)[i])
        bits = "".join("1" if c else "0" for c in correct[m])
        cbits = "".join("1" if c else "0" for c in control)
        packs[f"adapt-{m}/pack"] = {"method": m, "language": "ny", "examples": n, "accuracy": correct[m].mean(),
                                    "control_accuracy": control.mean(), "correct": bits, "control_correct": cbits}
    transfer = {"classification": {"task": "verse-genre", "chance_majority": {"majority": 0.2},
                                   "source": {"language": "en", "accuracy": 0.44}, "packs": packs}}
    (tmp_path / "transfer.json").write_text(json.dumps(transfer))
    return tmp_path, correct, control


def _row(report: str, method: str) -> list[str]:
    line = next(x for x in report.splitlines() if x.startswith(f"| {method} |"))
    return [c.strip() for c in line.strip("|").split("|")]


def test_report_table_and_paired_differences(pipeline_dir):
    work, correct, control = pipeline_dir
    out = pipeline_report(work, "pretrain", {"minipost": 12.0}, METHODS, prep={"minipost": "minipost"})
    text = out.read_text()
    assert (work / "adaptation.png").stat().st_size > 0 and (work / "transfer.png").stat().st_size > 0
    for m in METHODS:
        row = _row(text, m)
        assert float(row[1]) == pytest.approx(correct[m].mean(), abs=6e-4)
        d = correct[m].astype(float) - control
        diff, se = re.match(r"([+-][\d.]+) ± ([\d.]+)", row[3]).groups()
        assert float(diff) == pytest.approx(100 * d.mean(), abs=0.051)
        assert float(se) == pytest.approx(100 * d.std(ddof=1) / np.sqrt(len(d)), abs=0.051)
        assert row[3].endswith("*") == (abs(d.mean()) > 2 * d.std(ddof=1) / np.sqrt(len(d)))
        if m != "full":
            d = correct[m].astype(float) - correct["full"]
            assert float(row[4].split()[0]) == pytest.approx(100 * d.mean(), abs=0.051)
    assert _row(text, "minijoint")[9] == "3.00x"  # step-2 wall-clock: 90 s against 30 s
    assert _row(text, "minipost")[-1] == "minipost: 12"


def test_report_without_per_example_results(pipeline_dir):
    work, _, _ = pipeline_dir
    transfer = json.loads((work / "transfer.json").read_text())
    for pack in transfer["classification"]["packs"].values():
        del pack["correct"], pack["control_correct"]
    (work / "transfer.json").write_text(json.dumps(transfer))
    text = pipeline_report(work, "pretrain", {}, METHODS).read_text()
    assert _row(text, "minijoint")[3:5] == ["-", "-"]


# ---- the many-languages report (make pipeline PIPELINE=languages) ----------------------------------------

LANGS = ["sw", "tl", "vi"]


@pytest.fixture
def languages_dir(tmp_path):
    """Three languages x three methods; Tagalog's Bible lacks two of the test verses."""
    rng = np.random.default_rng(7)
    ids = [f"v{i}" for i in range(300)]
    lacks = {"tl": {"v3", "v150"}}
    flags, packs = {}, {}
    for i, m in enumerate(METHODS):
        _write_run(tmp_path / f"adapt-{m}", seconds_per_step=(6.0, 2.0, 2.5)[i], flops_per_step=(9e9, 3e9, 4e9)[i])
        for j, c in enumerate(LANGS):
            have = [v for v in ids if v not in lacks.get(c, ())]
            right = rng.random(len(have)) < 0.25 + 0.05 * j - 0.02 * i
            control = rng.random(len(have)) < 0.2
            flags[(m, c)] = (dict(zip(have, right)), dict(zip(have, control)))
            packs[f"adapt-{m}/packs/{c}"] = {
                "method": m, "language": c, "examples": len(have), "accuracy": right.mean(),
                "control_accuracy": control.mean(), "ids": have,
                "correct": "".join("1" if x else "0" for x in right),
                "control_correct": "".join("1" if x else "0" for x in control)}
    transfer = {"classification": {"task": "verse-genre", "chance_majority": {"majority": 0.2},
                                   "source": {"language": "en", "accuracy": 0.44}, "packs": packs}}
    (tmp_path / "transfer.json").write_text(json.dumps(transfer))
    return tmp_path, flags, [v for v in ids if v not in lacks["tl"]]


def _cells(report: str, first: str) -> list[str]:
    line = next(x for x in report.splitlines() if x.startswith(f"| {first}"))
    return [c.strip() for c in line.strip("|").split("|")]


def _diff_se(cell: str) -> tuple[float, float]:
    diff, se = re.match(r"([+-][\d.]+) ± ([\d.]+)", cell).groups()
    return float(diff), float(se)


def test_languages_report_per_language_and_average_against_numpy(languages_dir):
    from ds_minimodel.analysis.report import languages_report

    work, flags, common = languages_dir
    text = languages_report(work, "pretrain", {"minipost": 7.0}, METHODS, LANGS, prep={"minipost": "minipost"}).read_text()
    assert (work / "languages.png").stat().st_size > 0
    # Columns: language, verses, full acc, full vs control, then per mini method acc, vs control, vs full.
    col = {"full": 2, "minijoint": 4, "minipost": 7}
    for c, name in zip(LANGS, ("Swahili", "Tagalog", "Vietnamese")):
        row = _cells(text, f"{name} ({c})")
        assert int(row[1]) == len(flags[("full", c)][0])
        for m in METHODS:
            right, control = (np.array(list(d.values()), dtype=float) for d in flags[(m, c)])
            assert float(row[col[m]]) == pytest.approx(right.mean(), abs=6e-4)
            d = right - control
            assert _diff_se(row[col[m] + 1]) == pytest.approx((100 * d.mean(), 100 * d.std(ddof=1) / np.sqrt(len(d))),
                                                             abs=0.051)
    # The average: on the verses all languages have, per verse the mean over languages.
    row = _cells(text, "**average**")
    assert int(row[1]) == len(common) == 298

    def per_verse(m, which):
        return np.array([np.mean([flags[(m, c)][which][v] for c in LANGS]) for v in common])

    for m in METHODS:
        assert float(row[col[m]]) == pytest.approx(per_verse(m, 0).mean(), abs=6e-4)
        d = per_verse(m, 0) - per_verse(m, 1)
        assert _diff_se(row[col[m] + 1]) == pytest.approx((100 * d.mean(), 100 * d.std(ddof=1) / np.sqrt(len(d))),
                                                         abs=0.051)
        if m != "full":
            d = per_verse(m, 0) - per_verse("full", 0)
            assert _diff_se(row[col[m] + 2]) == pytest.approx(
                (100 * d.mean(), 100 * d.std(ddof=1) / np.sqrt(len(d))), abs=0.051)
    # Step-2 compute: each method's one job (30 steps of 9e9 / 3e9 FLOPs, 6 / 2 s a step).
    assert _cells(text, "minijoint |")[1:5] == ["9e+10", "3.00x fewer", "60", "3.00x"]
    assert _cells(text, "minipost |")[-1] == "minipost: 7"


def test_languages_report_names_a_missing_result(languages_dir):
    from ds_minimodel.analysis.report import languages_report
    from ds_minimodel.errors import UserError

    work, _, _ = languages_dir
    with pytest.raises(UserError, match="has no result for full/de, minijoint/de, minipost/de$"):
        languages_report(work, "pretrain", {}, METHODS, LANGS + ["de"])


# ---- the paper's comparison (the regular model's branch) --------------------------------------

def _write_pretrain(run, flops, valid_loss):
    run.mkdir(parents=True)
    with open(run / "metrics.jsonl", "w") as f:
        f.write(json.dumps({"kind": "train", "step": 400, "loss": 6.0, "flops": flops, "train_seconds": 9.0}) + "\n")
        f.write(json.dumps({"kind": "eval", "step": 400, "valid_final_loss": valid_loss}) + "\n")


def test_report_regular_section_pairs_by_verse_id(pipeline_dir):
    """Standard and MiniPost from the regular model, MiniJoint from its own: MiniJoint's difference
    to the standard baseline is paired by verse id (the regular transfer lists its verses in
    another order), and the mid head's cost compares the two models' English accuracy (paired)
    and final validation loss."""
    work, correct, _ = pipeline_dir
    rng = np.random.default_rng(3)
    n = len(correct["full"])
    ids = [f"v{i}" for i in range(n)]
    transfer = json.loads((work / "transfer.json").read_text())
    english_mj = rng.random(n) < 0.45
    for pack in transfer["classification"]["packs"].values():
        pack["ids"] = ids
    transfer["classification"]["source"].update(accuracy=english_mj.mean(), ids=ids,
                                                correct="".join("1" if x else "0" for x in english_mj))
    (work / "transfer.json").write_text(json.dumps(transfer))
    _write_pretrain(work / "pretrain", 7.3e13, 5.87)

    regular = work / "regular"
    order = rng.permutation(n)
    reg_flags = {m: rng.random(n) < p for m, p in (("full", 0.31), ("minipost", 0.28))}
    english_reg = rng.random(n) < 0.47
    bits = lambda a: "".join("1" if x else "0" for x in a)  # noqa: E731
    packs = {}
    for m, (sec, fl) in (("full", (4.0, 12e9)), ("minipost", (1.5, 5e9))):
        _write_run(regular / f"adapt-{m}", seconds_per_step=sec, flops_per_step=fl)
        packs[f"regular/adapt-{m}/pack"] = {"method": m, "language": "ny", "examples": n,
                                            "accuracy": reg_flags[m].mean(), "control_accuracy": 0.2,
                                            "correct": bits(reg_flags[m][order]), "control_correct": "0" * n,
                                            "ids": [ids[i] for i in order]}
    (regular / "transfer.json").write_text(json.dumps({"classification": {
        "task": "verse-genre", "chance_majority": {"majority": 0.2}, "packs": packs,
        "source": {"language": "en", "accuracy": english_reg.mean(), "correct": bits(english_reg[order]),
                   "ids": [ids[i] for i in order]}}}))
    _write_pretrain(regular / "pretrain", 6.9e13, 5.91)

    text = pipeline_report(work, work / "pretrain", {}, METHODS, regular=regular).read_text()
    section = text[text.index("## The paper's comparison"):]
    row = _row(section, "minijoint")
    assert row[1] == "MiniJoint" and float(row[2]) == pytest.approx(correct["minijoint"].mean(), abs=6e-4)
    d = correct["minijoint"].astype(float) - reg_flags["full"]
    diff, se = re.match(r"([+-][\d.]+) ± ([\d.]+)", row[5]).groups()
    assert (float(diff), float(se)) == pytest.approx((100 * d.mean(), 100 * d.std(ddof=1) / np.sqrt(n)), abs=0.051)
    assert row[7] == "4.00x"  # step-2 FLOPs: 30 x 12e9 against 30 x 3e9
    assert _row(section, "minipost")[7] == "2.40x" and _row(section, "standard")[5] == "-"
    cost = _row(section, "MiniJoint")
    assert cost[1:4] == ["7.3e+13", "5.870", f"{english_mj.mean():.3f}"]
    d = english_mj.astype(float) - english_reg
    diff, se = re.match(r"([+-][\d.]+) ± ([\d.]+)", cost[4]).groups()
    assert (float(diff), float(se)) == pytest.approx((100 * d.mean(), 100 * d.std(ddof=1) / np.sqrt(n)), abs=0.051)
    assert _row(section, "regular")[1:3] == ["6.9e+13", "5.910"]


def _without_majority(work):
    transfer = json.loads((work / "transfer.json").read_text())
    transfer["classification"]["chance_majority"] = {}
    (work / "transfer.json").write_text(json.dumps(transfer))


def test_a_missing_majority_class_rate_is_shown_as_unknown_not_zero(pipeline_dir):
    """transfer.json without the majority-class rate: the report says "?", never a made-up 0.000."""
    _without_majority(pipeline_dir[0])
    text = pipeline_report(pipeline_dir[0], "pretrain", {}, METHODS).read_text()
    assert "chance (majority class): ?." in text, text[:600]


def test_a_missing_majority_class_rate_is_unknown_in_the_languages_report_too(languages_dir):
    from ds_minimodel.analysis.report import languages_report

    _without_majority(languages_dir[0])
    text = languages_report(languages_dir[0], "pretrain", {}, METHODS, LANGS).read_text()
    assert "chance (majority class): ?." in text, text[:600]
