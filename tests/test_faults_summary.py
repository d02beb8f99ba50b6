"""bench/faults.py's summary line (`make faults`) on a synthetic scenario set, through the real
pytest JUnit XML: a crash-and-resume scenario that was skipped must show as unmeasured, not as 0."""

import subprocess
import sys

from tests.conftest import REPO

SCENARIOS = '''
import pytest

@pytest.mark.crash_resume
def test_measured(record_property):
    record_property("steps_lost", 0)
    record_property("steps_rerun", 2)

@pytest.mark.crash_resume
def test_skipped_before_measuring():
    pytest.skip("no network namespaces here")

def test_other_fault():
    pass
'''


def summary_of(tmp_path, source: str) -> tuple[list[str], str]:
    sys.path.insert(0, str(REPO / "bench"))
    try:
        import faults
    finally:
        sys.path.pop(0)
    tests = tmp_path / "tests"
    tests.mkdir()
    (tests / "test_faults.py").write_text(source)
    junit = tmp_path / "junit.xml"
    # Our conftest as a plugin: its hook tags crash_resume scenarios in the XML, as under `make faults`.
    subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "tests.conftest", "-c", str(REPO / "pytest.ini"),
                    "--rootdir", str(tmp_path), f"--junitxml={junit}", "-o", "junit_family=xunit1",
                    str(tests / "test_faults.py")], cwd=REPO, capture_output=True, check=False)
    return faults.summarize(faults.read_junit(junit))


def test_a_skipped_crash_and_resume_scenario_is_unmeasured_not_zero(tmp_path):
    lines, final = summary_of(tmp_path, SCENARIOS)
    assert final.startswith("faults survived: 2/3, ")
    assert final.endswith("steps lost: ? (1 of 2 crash-and-resume scenarios unmeasured; 0 in the 1 measured)"), final
    assert any("unmeasured in 1 scenario(s): test_skipped_before_measuring" in line for line in lines)


def test_all_measured_gives_the_sum(tmp_path):
    measured_both = SCENARIOS.replace('def test_skipped_before_measuring():\n    pytest.skip("no network namespaces here")',
                                      'def test_skipped_before_measuring(record_property):\n'
                                      '    record_property("steps_lost", 3)')
    assert measured_both != SCENARIOS
    _, final = summary_of(tmp_path, measured_both)
    assert final == "faults survived: 3/3, bad inputs rejected cleanly: 0/0, steps lost: 3"
