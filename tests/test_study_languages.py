"""The ratio averaged over languages (analysis/study/languages.py, `study.py --average`) on made-up
study.json files with known replicates, against the standard library's geometric mean and
order statistics taken by hand."""

import json
import math
import statistics

import numpy as np
import pytest

from ds_minimodel.analysis.study.languages import average_studies, geometric_mean, read_studies
from ds_minimodel.errors import UserError
from tests.helpers import expect_rejected


def _study(language: str, ratios: dict, replicates: dict, metric: str = "accuracy") -> dict:
    """A study.json as compare.py writes it, reduced to what the average reads."""
    methods = {name: {"ratio_value": r, "interval_flops": [replicates[name][0], replicates[name][-1]],
                      "final_metric": 0.3, "bootstrap": {"ratios": replicates[name]}}
               for name, r in ratios.items()}
    methods["full"] = {"ratio_value": 1.0, "interval_flops": [1.0, 1.0], "final_metric": 0.3}
    return {"metric": metric, "summary": {name: {} for name in ratios},
            "runs": {"full": [{"language": language}], **{n: [{"language": language}] for n in ratios}},
            "metrics": {metric: {"matched": {"baseline": "full", "methods": methods}}}}


def _order_interval(values, level=0.95):
    """Percentile interval by hand: the order statistics at floor((n-1) q_lo) and ceil((n-1) q_hi)."""
    v = sorted(x for x in values if not math.isnan(x))
    n = len(v)
    return v[math.floor((n - 1) * (1 - level) / 2)], v[math.ceil((n - 1) * (1 + level) / 2)]


def test_geometric_mean_over_languages_and_its_bootstrap_interval():
    rng = np.random.default_rng(1)
    b = 400
    reps = {lang: rng.lognormal(np.log(r), 0.2, b).tolist() for lang, r in (("sw", 2.0), ("tl", 3.5), ("vi", 1.2))}
    studies = {lang: _study(lang, {"minijoint": r}, {"minijoint": reps[lang]})
               for lang, r in (("sw", 2.0), ("tl", 3.5), ("vi", 1.2))}
    result = average_studies(studies)
    e = result["methods"]["minijoint"]["accuracy"]
    assert e["ratio"] == pytest.approx(statistics.geometric_mean([2.0, 3.5, 1.2]))
    by_replicate = [statistics.geometric_mean([reps[lang][i] for lang in ("sw", "tl", "vi")]) for i in range(b)]
    lo, hi = _order_interval(by_replicate)
    assert e["interval"] == [pytest.approx(lo), pytest.approx(hi)]
    assert e["per_language"]["tl"]["ratio"] == 3.5 and result["languages"] == ["sw", "tl", "vi"]


def test_censored_ratios_keep_their_meaning():
    """Not reached (0) in one language makes the average 0; reached at initialisation (inf) makes it
    inf; both in one replicate leave it undefined, and the interval comes from the others."""
    assert geometric_mean([0.0, 2.0, 3.0]) == 0.0
    assert geometric_mean([math.inf, 2.0]) == math.inf
    assert math.isnan(geometric_mean([0.0, math.inf]))
    studies = {"sw": _study("sw", {"minipost": 0}, {"minipost": [0, 2.0, 2.0, 2.0]}),
               "tl": _study("tl", {"minipost": 2.0}, {"minipost": ["inf", 2.0, 2.0, 8.0]})}
    e = average_studies(studies)["methods"]["minipost"]["accuracy"]
    assert e["ratio"] == 0.0
    assert e["interval"] == [2.0, 4.0]  # replicate 0 (0 and inf) dropped; the others 2, 2, 4


def test_average_refuses_what_does_not_average(tmp_path, capsys):
    one = _study("sw", {"minijoint": 2.0}, {"minijoint": [2.0, 2.1]})
    with pytest.raises(UserError, match="at least two languages"):
        average_studies({"sw": one})
    old = _study("tl", {"minijoint": 2.0}, {"minijoint": [2.0, 2.1]})
    del old["metrics"]["accuracy"]["matched"]["methods"]["minijoint"]["bootstrap"]
    with pytest.raises(UserError, match="tl's study has no bootstrap replicates"):
        average_studies({"sw": one, "tl": old})
    other = _study("vi", {"minijoint": 2.0}, {"minijoint": [2.0, 2.1, 2.2]})
    with pytest.raises(UserError, match="different numbers of bootstrap replicates"):
        average_studies({"sw": one, "vi": other})

    from launchers.study import main

    for lang, s in (("sw", one), ("sw2", _study("sw", {"minijoint": 3.0}, {"minijoint": [3.0, 3.1]}))):
        (tmp_path / lang).mkdir()
        (tmp_path / lang / "study.json").write_text(json.dumps(s))
    with pytest.raises(UserError, match="two studies of language 'sw'"):
        read_studies([tmp_path / "sw", tmp_path / "sw2"])
    expect_rejected(capsys, main, ["--average", str(tmp_path / "sw"), str(tmp_path / "missing"), "--out",
                                   str(tmp_path / "avg")], "no study.json")
    expect_rejected(capsys, main, ["--average", str(tmp_path / "sw"), str(tmp_path / "sw2"), "--out",
                                   str(tmp_path / "sw")], "is one of the averaged studies")


def test_average_launcher_writes_the_summary_lines(tmp_path, capsys):
    from launchers.study import main

    for lang, r in (("sw", 2.0), ("tl", 8.0)):
        (tmp_path / lang).mkdir()
        (tmp_path / lang / "study.json").write_text(json.dumps(_study(lang, {"minijoint": r},
                                                                      {"minijoint": [r, r, r]})))
    main(["--average", str(tmp_path / "sw"), str(tmp_path / "tl"), "--out", str(tmp_path / "avg")])
    out = capsys.readouterr().out
    assert "study minijoint: compute ratio 4.00 (95% interval 4.00-4.00) at matched accuracy " \
           "(geometric mean over 2 languages)" in out
    saved = json.loads((tmp_path / "avg" / "study.json").read_text())
    assert saved["methods"]["minijoint"]["accuracy"]["ratio"] == pytest.approx(4.0)
    assert "| tl | 8.00 |" in (tmp_path / "avg" / "study.md").read_text()
