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
