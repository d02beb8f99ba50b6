"""The ratio averaged over languages (study/languages.py, `study.py --average`) on made-up
study.json files with known replicates, against the standard library's geometric mean and
order statistics taken by hand."""

import hashlib
import json
import math
import statistics

import numpy as np
import pytest

from ds_minimodel.errors import UserError
from ds_minimodel.study.languages import average_studies, geometric_mean, read_studies, summary_lines
from tests.helpers import expect_rejected


def _stream(language: str, seed: int = 0) -> int:
    """The study's bootstrap stream as compare.py records it: sha256 of '<language>:<seed>', 64 bits."""
    return int.from_bytes(hashlib.sha256(f"{language}:{seed}".encode()).digest()[:8], "big")


def _study(language: str, ratios: dict, replicates: dict, metric: str = "accuracy", bounds: dict | None = None,
           level: float = 0.95, fraction: float = 1.0, baseline_at: str = "crossing", fit: str = "isotonic",
           include_init: bool = True) -> dict:
    """A study.json as compare.py writes it, reduced to what the average reads. A ratio 0 is "not
    reached" (its bound from `bounds`), inf "reached at 0 FLOPs", None undefined."""
    def outcome(r):
        return "met_at_start" if r is None else "not_reached" if r == 0 else \
            "at_zero_flops" if r in ("inf", math.inf) else "ratio"
    methods = {name: {"ratio_value": r, "outcome": outcome(r), "ratio_bound": (bounds or {}).get(name),
                      "interval_flops": [replicates[name][0], replicates[name][-1]],
                      "final_metric": 0.3, "bootstrap": {"ratios": replicates[name]}}
               for name, r in ratios.items()}
    methods["full"] = {"ratio_value": 1.0, "outcome": "ratio", "interval_flops": [1.0, 1.0], "final_metric": 0.3}
    return {"metric": metric, "level": level, "include_init_point": include_init,
            "bootstrap_stream": {"stream": _stream(language), "language": language, "bootstrap_seed": 0},
            "summary": {name: {} for name in ratios},
            "runs": {"full": [{"language": language}], **{n: [{"language": language}] for n in ratios}},
            "metrics": {metric: {"matched": {"baseline": "full", "fraction": fraction, "baseline_at": baseline_at,
                                             "fit": fit, "methods": methods}}}}


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


def test_a_language_not_reached_makes_the_mean_a_bound_and_undefined_replicates_are_counted():
    """Not reached in sw (its ratio < 0.5) and 2.0 in tl: the mean is a bound, below
    sqrt(0.5 * 2) = 1.0, never 0. Replicate 0 is undefined (not reached in sw, reached at 0 FLOPs in
    tl): counted, n = 3 of 4, under 90%, so no interval, and the line says why."""
    assert geometric_mean([0.0, 2.0, 3.0]) == 0.0
    assert geometric_mean([math.inf, 2.0]) == math.inf
    assert math.isnan(geometric_mean([0.0, math.inf]))
    studies = {"sw": _study("sw", {"minipost": 0}, {"minipost": [0, 2.0, 2.0, 2.0]}, bounds={"minipost": 0.5}),
               "tl": _study("tl", {"minipost": 2.0}, {"minipost": ["inf", 2.0, 2.0, 8.0]})}
    result = average_studies(studies)
    e = result["methods"]["minipost"]["accuracy"]
    assert e["outcome"] == "not_reached" and e["ratio_bound"] == pytest.approx(math.sqrt(0.5 * 2.0))
    assert (e["n"], e["replicates"], e["interval"]) == (3, 4, None)
    line = summary_lines(result)[0]
    assert "compute ratio < 1.00" in line and "not reached in sw" in line and "0.00" not in line, line
    assert "no 95% interval" in line and "n = 3 of 4" in line and "under 90%" in line, line


def test_an_interval_needs_90_percent_of_the_replicates_defined():
    """9 of 10 replicates defined: the interval over those 9, by hand; 8 of 10: none."""
    sw = [2.0] * 9 + [0]  # replicate 9: not reached in sw ...
    tl = [1.0 + i / 10 for i in range(9)] + ["inf"]  # ... and reached at 0 FLOPs in tl: undefined
    studies = {"sw": _study("sw", {"m": 2.0}, {"m": sw}, bounds={"m": 0.5}), "tl": _study("tl", {"m": 1.5}, {"m": tl})}
    result = average_studies(studies)
    e = result["methods"]["m"]["accuracy"]
    by_hand = [statistics.geometric_mean([2.0, 1.0 + i / 10]) for i in range(9)]
    assert e["ratio"] == pytest.approx(math.sqrt(3.0)) and (e["n"], e["replicates"]) == (9, 10)
    assert e["interval"] == [pytest.approx(x) for x in _order_interval(by_hand)]
    line = summary_lines(result)[0]
    assert line.startswith("study m: compute ratio 1.73 (95% interval ") and line.endswith("n = 9 of 10 replicates")
    studies["sw"]["metrics"]["accuracy"]["matched"]["methods"]["m"]["bootstrap"]["ratios"][8] = None
    e = average_studies(studies)["methods"]["m"]["accuracy"]
    assert (e["n"], e["interval"]) == (8, None)


def test_reached_at_zero_flops_or_no_ratio_in_one_language_gives_no_mean():
    """inf in one language: the mean is unbounded (no finite value, said so); a language with no
    ratio (its target met at the start) leaves the mean undefined; neither prints a number."""
    reps = [2.0, 2.0, 2.0]
    inf = average_studies({"sw": _study("sw", {"m": "inf"}, {"m": ["inf"] * 3}), "tl": _study("tl", {"m": 2.0}, {"m": reps})})
    e = inf["methods"]["m"]["accuracy"]
    assert e["outcome"] == "at_zero_flops" and e["ratio"] == math.inf
    line = summary_lines(inf)[0]
    assert "no finite compute ratio" in line and "reached at 0 FLOPs in sw" in line and " inf" not in line, line
    none = average_studies({"sw": _study("sw", {"m": None}, {"m": [None] * 3}), "tl": _study("tl", {"m": 2.0}, {"m": reps})})
    e = none["methods"]["m"]["accuracy"]
    assert e["outcome"] == "undefined" and math.isnan(e["ratio"]) and e["interval"] is None and e["n"] == 0
    line = summary_lines(none)[0]
    assert "no compute ratio" in line and "target met at the start in sw" in line and "n/a" not in line, line


def test_average_refuses_studies_without_a_stream_with_one_stream_or_other_definitions(tmp_path, capsys):
    """Each study must record its own bootstrap stream (every study.json written before the streams
    were derived per language records none), no two the same, and the same level and target."""
    from launchers.study import main

    sw = _study("sw", {"minijoint": 2.0}, {"minijoint": [2.0, 2.1]})
    old = _study("tl", {"minijoint": 3.0}, {"minijoint": [3.0, 3.1]})
    del old["bootstrap_stream"]
    for name, s in (("sw", sw), ("tl", old)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "study.json").write_text(json.dumps(s))
    expect_rejected(capsys, main, ["--average", str(tmp_path / "sw"), str(tmp_path / "tl"), "--out",
                                   str(tmp_path / "avg")], "record no bootstrap stream", "tl (")
    assert not (tmp_path / "avg" / "study.json").exists()
    same = _study("vi", {"minijoint": 2.0}, {"minijoint": [2.0, 2.1]})
    same["bootstrap_stream"] = dict(sw["bootstrap_stream"])
    with pytest.raises(UserError, match=r"sw .*vi .*one bootstrap stream"):
        average_studies({"sw": sw, "vi": same})
    for key, value in (("level", 0.9), ("fraction", 0.9), ("baseline_at", "final"), ("fit", "raw"),
                       ("include_init", False)):
        other = _study("vi", {"minijoint": 2.0}, {"minijoint": [2.0, 2.1]}, **{key: value})
        with pytest.raises(UserError) as err:
            average_studies({"sw": sw, "vi": other})
        message = str(err.value)
        assert key in message and "sw" in message and "vi" in message and "\n" not in message, message


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
           "(geometric mean over 2 languages); n = 3 of 3 replicates" in out
    saved = json.loads((tmp_path / "avg" / "study.json").read_text())
    assert saved["methods"]["minijoint"]["accuracy"]["ratio"] == pytest.approx(4.0)
    assert "| tl | 8.00 |" in (tmp_path / "avg" / "study.md").read_text()


def _failed_check(study: dict, required: bool = True) -> dict:
    return {**study, "transfer_check": {"passed": False, "required": required,
                                        "why": "the standard baseline did not transfer: agreement 0.04 ..."}}


def test_a_language_that_failed_its_enforced_transfer_check_is_left_out_of_the_mean_and_named(tmp_path, capsys):
    """No ratio without transfer: a language whose study enforced the check and failed it is not
    averaged (its ratio of 100 would move the mean); one that failed an unenforced check is."""
    studies = {"sw": _study("sw", {"minijoint": 2.0}, {"minijoint": [2.0, 2.0, 2.0]}),
               "tl": _study("tl", {"minijoint": 8.0}, {"minijoint": [8.0, 8.0, 8.0]}),
               "xx": _failed_check(_study("xx", {"minijoint": 100.0}, {"minijoint": [100.0] * 3}))}
    result = average_studies(studies)
    entry = result["methods"]["minijoint"]["accuracy"]
    assert entry["ratio"] == pytest.approx(statistics.geometric_mean([2.0, 8.0]))
    assert list(entry["per_language"]) == ["sw", "tl"] and result["averaged"] == ["sw", "tl"]
    assert result["withheld"] == {"xx": studies["xx"]["transfer_check"]["why"]}
    lines = summary_lines(result)
    assert lines[0] == f"study: xx left out of the average (no ratio without transfer): {result['withheld']['xx']}"
    assert "geometric mean over 2 languages" in lines[-1]
    # Checked but not enforced: averaged like any other.
    unenforced = average_studies({**studies, "xx": _failed_check(studies["xx"], required=False)})
    assert unenforced["withheld"] == {} and unenforced["methods"]["minijoint"]["accuracy"]["ratio"] == \
        pytest.approx(statistics.geometric_mean([2.0, 8.0, 100.0]))


def test_with_fewer_than_two_languages_that_transferred_there_is_no_average_and_one_line_says_why(tmp_path, capsys):
    from launchers.study import main

    for lang, r in (("sw", 2.0), ("tl", 8.0), ("xx", 3.0)):
        study = _study(lang, {"minijoint": r}, {"minijoint": [r, r, r]})
        (tmp_path / lang).mkdir()
        (tmp_path / lang / "study.json").write_text(json.dumps(study if lang == "sw" else _failed_check(study)))
    main(["--average", *(str(tmp_path / lang) for lang in ("sw", "tl", "xx")), "--out", str(tmp_path / "avg")])
    out = capsys.readouterr().out
    assert "study: no compute ratio averaged over languages: the transfer check failed in tl, xx " \
           "(only sw passed it; an average needs two)" in out
    assert "compute ratio 2.00" not in out
    saved = json.loads((tmp_path / "avg" / "study.json").read_text())
    assert saved["methods"] == {} and set(saved["withheld"]) == {"tl", "xx"}
    md = (tmp_path / "avg" / "study.md").read_text()
    assert "no average" in md and "- tl: the standard baseline did not transfer" in md


def test_the_average_shows_every_languages_own_numbers_withheld_or_not():
    def with_gain(study, first, final, lo, hi, passed):
        metric = study["metric"]
        study["metrics"][metric]["baseline_gain"] = {"point": final - first, "interval": [lo, hi], "first": first,
                                                     "final": final}
        loss = _study("any", {"minijoint": 1.0}, {"minijoint": [1.0] * 3}, metric="mlm_loss")["metrics"]["mlm_loss"]
        loss["matched"]["methods"]["full"]["final_metric"] = 4.25
        loss["matched"]["methods"]["minijoint"]["final_metric"] = 5.5
        study["metrics"]["mlm_loss"] = loss
        return {**study, "transfer_check": {"passed": passed, "required": True, "why": "no transfer"}}

    studies = {"sw": with_gain(_study("sw", {"minijoint": 2.0}, {"minijoint": [2.0] * 3}), 0.05, 0.25, 0.1, 0.3, True),
               "tl": with_gain(_study("tl", {"minijoint": 8.0}, {"minijoint": [8.0] * 3}), 0.05, 0.15, 0.02, 0.2, True),
               "xx": with_gain(_study("xx", {"minijoint": 9.0}, {"minijoint": [9.0] * 3}), 0.04, 0.08, -0.05, 0.12,
                               False)}
    from ds_minimodel.study.languages import markdown

    md = "\n".join(markdown(average_studies(studies)))
    assert "| language | transfer check | baseline gain | method | accuracy | plugged MLM loss |" in md
    assert "| xx | failed | 0.040 -> 0.080: +0.040 (-0.050 to +0.120) | minijoint | 0.3000 | 5.5000 |" in md
    assert "|  |  |  | full | 0.3000 | 4.2500 |" in md
    assert "| sw | passed | 0.050 -> 0.250: +0.200 (+0.100 to +0.300) |" in md
