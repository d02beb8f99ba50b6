"""How close the test suite's float comparisons come to their derived bounds, per kernel setting.

Every fp32 comparison in tests/ goes through tests/helpers.assert_close_fp32, which (with
DSM_TOLERANCE_LOG=path) appends one JSON line per comparison: the largest error, the bound at that
element, and their ratio (the test passes iff the ratio is <= 1). This script runs the numerical
tests once per kernel setting with such a log and tabulates the logs:

    python bench/tolerance_report.py --run runs/tolerance tests/test_hf_parity.py ...
    python bench/tolerance_report.py runs/tolerance/*.jsonl          # tabulate existing logs

Settings (`--settings`): native (what the CPU offers), avx2 and default (ATEN_CPU_CAPABILITY:
ATen's vectorised kernels at AVX2 width, or its scalar ones), and blas-compat: default plus the
baseline GEMM kernels of MKL (torch's BLAS, MKL_CBWR=COMPATIBLE) and OpenBLAS (numpy's, which
Triton's interpreter uses; OPENBLAS_CORETYPE=Prescott): the closest this machine gets to another
CPU's GEMM blocking. Output: the largest ratio per test file and setting, then the worst
comparisons (test, what, bound, and per setting the max error and its ratio to the bound).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
from pathlib import Path

SETTINGS = {
    "native": {},
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2"},
    "default": {"ATEN_CPU_CAPABILITY": "default"},
    "blas-compat": {"ATEN_CPU_CAPABILITY": "default", "MKL_CBWR": "COMPATIBLE", "OPENBLAS_CORETYPE": "Prescott"},
}


def run(out: Path, settings: list[str], tests: list[str]) -> list[Path]:
    """Run `tests` under each setting with a tolerance log; returns the logs."""
    out.mkdir(parents=True, exist_ok=True)
    logs = []
    for name in settings:
        log = out / f"{name}.jsonl"
        log.unlink(missing_ok=True)
        env = {k: v for k, v in os.environ.items()
               if k not in ("ATEN_CPU_CAPABILITY", "MKL_CBWR", "OPENBLAS_CORETYPE")}
        env.update(SETTINGS[name], OMP_NUM_THREADS="1", DSM_TOLERANCE_LOG=str(log.resolve()),
                   DSM_TOLERANCE_SETTING=name)
        print(f"== {name}: {' '.join(f'{k}={v}' for k, v in SETTINGS[name].items()) or '(no overrides)'}",
              flush=True)
        code = subprocess.call([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests], env=env)
        if code:
            print(f"   pytest exited {code} under {name}", flush=True)
        logs.append(log)
    return logs


def load(paths: list[Path]) -> list[dict]:
    rows = []
    for p in paths:
        rows += [json.loads(line) for line in p.read_text().splitlines() if line.strip()]
    return rows


def report(rows: list[dict], worst: int = 25) -> str:
    settings = sorted({r["setting"] for r in rows}, key=lambda s: list(SETTINGS).index(s.split()[0])
                      if s.split()[0] in SETTINGS else 99)
    per_file = collections.defaultdict(dict)
    for r in rows:
        f = r["test"].split("::")[0]
        per_file[f][r["setting"]] = max(per_file[f].get(r["setting"], 0.0), r["ratio"])
    lines = ["largest error / bound per file (pass iff <= 1); comparisons logged: "
             + ", ".join(f"{s}: {sum(r['setting'] == s for r in rows)}" for s in settings), ""]
    head = ["file"] + settings
    table = [[f] + [f"{per_file[f][s]:.3g}" if s in per_file[f] else "-" for s in settings] for f in sorted(per_file)]
    lines += _table(head, table)

    # The worst comparison of each (test, what) under each setting, ranked by its worst ratio.
    by_key = collections.defaultdict(dict)
    for r in rows:
        key = (r["test"], r["what"])
        if r["setting"] not in by_key[key] or r["ratio"] > by_key[key][r["setting"]]["ratio"]:
            by_key[key][r["setting"]] = r
    ranked = sorted(by_key.items(), key=lambda kv: -max(r["ratio"] for r in kv[1].values()))[:worst]
    lines += ["", f"the {len(ranked)} worst comparisons: max error (and max error / bound there) per setting; "
              f"bound = the bound at the worst element under {settings[0]}", ""]
    table = []
    for (test, what), per in ranked:
        first = per.get(settings[0]) or next(iter(per.values()))
        table.append([_short(test), what, f"{first['bound']:.2e}"]
                     + [f"{per[s]['max_err']:.2e} ({per[s]['ratio']:.3f})" if s in per else "-" for s in settings])
    lines += _table(["test", "what", "bound"] + [s.split()[0] for s in settings], table)
    return "\n".join(lines)


def _short(test: str) -> str:
    return test.replace("tests/", "").replace(".py::", "::")


def _table(head: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    fmt = lambda row: "| " + " | ".join(str(x).ljust(w) for x, w in zip(row, widths)) + " |"  # noqa: E731
    return [fmt(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [fmt(r) for r in rows]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("paths", nargs="*", help="tolerance logs to tabulate, or with --run the tests to run")
    ap.add_argument("--run", metavar="DIR", type=Path, help="run the tests under each setting, logs in DIR")
    ap.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    ap.add_argument("--worst", type=int, default=25, help="how many of the worst comparisons to list")
    args = ap.parse_args(argv)
    logs = run(args.run, args.settings, args.paths) if args.run else [Path(p) for p in args.paths]
    rows = load([p for p in logs if p.is_file()])
    if not rows:
        print("no comparisons logged", file=sys.stderr)
        return 1
    print(report(rows, args.worst))
    return 0


if __name__ == "__main__":
    sys.exit(main())
