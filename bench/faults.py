"""The fault matrix (`make faults`): every fault and bad-input test, then one summary line.

    OMP_NUM_THREADS=1 python bench/faults.py [--junit runs/faults/junit.xml] [pytest args...]

Runs tests/test_faults.py and tests/test_multinode.py (all of them, including the slow ones
marked `faults` that `make test` leaves out) and tests/test_bad_input.py under pytest, reads the
JUnit XML it writes and prints a table, then as the last line

    faults survived: N/N, bad inputs rejected cleanly: M/M, steps lost: L

- A fault is survived when its test passes: the run failed (or stopped) within a bounded time,
  `latest` named a complete checkpoint, and --resume (where the scenario has one) ended with the
  weights and loss log of an uninterrupted run, bit for bit. A skipped scenario (e.g. no
  network namespaces on this machine) is not survived: it counts in N and its reason is printed.
- A bad input is rejected cleanly when its test passes: exit status 2, exactly one `error:` line
  naming the fault, no traceback, no existing file changed.
- Steps lost, summed over the crash-and-resume scenarios: the newest complete checkpoint on disk
  after the crash minus the step the resume continued from (a finished checkpoint the resume
  ignored), plus any step the resumed run fell short of train.steps. Steps done after the last
  checkpoint and redone after the resume are the checkpoint interval's price, not lost; they
  are printed as "re-run". A crash-and-resume scenario (marked `crash_resume`) that was skipped or
  failed before measuring makes the total unknown: "?", with how many were unmeasured, never 0.

The exit status is pytest's (non-zero when any test failed).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FAULT_FILES = ("tests/test_faults.py", "tests/test_multinode.py")
BAD_INPUT_FILES = ("tests/test_bad_input.py",)
# Tests in those files that check correctness rather than survive a fault: run, shown, not counted.
NOT_FAULTS = ("test_two_hosts_train_like_one_node", "test_slurm_script_runs_on_two_hosts",
              "test_openmpi_hostfile_runs_on_two_hosts")


def read_junit(path: Path) -> list[dict]:
    """One dict per test: file, name, outcome (passed|failed|skipped), seconds, message, properties."""
    cases = []
    for case in ET.parse(path).getroot().iter("testcase"):
        outcome, message = "passed", ""
        for tag in ("failure", "error", "skipped"):
            node = case.find(tag)
            if node is not None:
                outcome = "skipped" if tag == "skipped" else "failed"
                message = (node.get("message") or "").splitlines()[0] if node.get("message") else ""
                break
        props = {p.get("name"): p.get("value") for p in case.iter("property")}
        module = case.get("classname", "").split(".")
        cases.append({"file": "/".join(module[:2]) + ".py" if len(module) >= 2 else "", "name": case.get("name"),
                      "outcome": outcome, "seconds": float(case.get("time", 0)), "message": message,
                      "props": props})
    return cases


def summarize(cases: list[dict]) -> tuple[list[str], str]:
    shown_cases = [c for c in cases if c["file"] in FAULT_FILES]
    faults = [c for c in shown_cases if c["name"] not in NOT_FAULTS]
    bad = [c for c in cases if c["file"] in BAD_INPUT_FILES]
    lines = [f"{'fault scenario':<86} {'result':>8} {'secs':>6}  measurements"]
    lost, rerun, measured, unmeasured = 0, 0, 0, []
    for c in shown_cases:
        p = c["props"]
        if "steps_lost" in p:
            lost += int(p["steps_lost"])
            rerun += int(p.get("steps_rerun", 0))
            measured += 1
        elif "crash_resume" in p or c["outcome"] == "failed":
            # Skipped, or broke before measuring: what it would have lost is unknown, not 0.
            unmeasured.append(c["name"])
        shown = ", ".join(f"{k}={v}" for k, v in sorted(p.items()) if k != "crash_resume")
        if c["name"] in NOT_FAULTS:
            shown = "(correctness check, not counted as a fault) " + shown
        lines.append(f"{c['file'].split('/')[-1] + '::' + c['name']:<86} {c['outcome']:>8} {c['seconds']:>6.1f}  {shown}")
        if c["outcome"] != "passed" and c["message"]:
            lines.append(f"    {c['outcome']}: {c['message'][:160]}")
    failed_bad = [c for c in bad if c["outcome"] != "passed"]
    for c in failed_bad:
        lines.append(f"bad input not rejected cleanly: {c['name']} ({c['outcome']}: {c['message'][:160]})")
    simulated = sorted({c["props"]["simulated_by"] for c in cases if "simulated_by" in c["props"]})
    if simulated:
        lines.append(f"disk full simulated by: {', '.join(simulated)}")
    lines.append(f"steps re-run after resumes (done after the last checkpoint before a crash): {rerun}")
    if unmeasured:
        lines.append(f"steps lost unmeasured in {len(unmeasured)} scenario(s): {', '.join(unmeasured)}")
    survived = sum(c["outcome"] == "passed" for c in faults)
    clean = len(bad) - len(failed_bad)
    steps_lost = (f"? ({len(unmeasured)} of {measured + len(unmeasured)} crash-and-resume scenarios unmeasured; "
                  f"{lost} in the {measured} measured)") if unmeasured else str(lost)
    final = (f"faults survived: {survived}/{len(faults)}, bad inputs rejected cleanly: {clean}/{len(bad)}, "
             f"steps lost: {steps_lost}")
    return lines, final


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--junit", default=str(REPO / "runs" / "faults" / "junit.xml"))
    args, pytest_args = ap.parse_known_args()
    junit = Path(args.junit)
    junit.parent.mkdir(parents=True, exist_ok=True)
    junit.unlink(missing_ok=True)
    t0 = time.monotonic()
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "faults or not faults", "-p", "no:cacheprovider",
           f"--junitxml={junit}", "-o", "junit_family=xunit1", *FAULT_FILES, *BAD_INPUT_FILES, *pytest_args]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    code = subprocess.call(cmd, cwd=REPO, env=env)
    if not junit.is_file():
        print(f"pytest wrote no {junit} (exit {code})", file=sys.stderr)
        return code or 1
    lines, final = summarize(read_junit(junit))
    print("\n".join(lines))
    print(f"fault matrix wall-clock: {time.monotonic() - t0:.0f} s")
    print(final)
    return code


if __name__ == "__main__":
    sys.exit(main())
