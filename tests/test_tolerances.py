"""The derived fp32 bound of tests/helpers.py, and that a forced kernel setting reaches every rank.

`make test-isa` reruns the numerical tests with ATEN_CPU_CAPABILITY=default and =avx2. ATen
reads the variable once, when torch is imported; the 2-rank tests fork ranks from the pytest
process and the Triton tests start a child pytest, so both must run under the same setting as
the parent, or test-isa would check nothing there.
"""

import json
import os
import subprocess
import sys

import pytest
import torch

from tests.distributed import run_ranks
from tests.helpers import assert_close_fp32, fp32_tolerance


def test_bound_by_hand():
    """Worked by hand from the derivation in tests/helpers.py (16 x fp32's eps 2^-23 x sqrt(reduction)
    x depth x steps, times the magnitude), not from its constants: every factor here is a power of
    two or a small integer, so the values are exact."""
    expected = torch.tensor([0.5, -4.0, 2.0])
    # 16 * sqrt(64) * 3 * 2 = 768 eps = 768 / 2^23; at max |expected| = 4: 3072 / 2^23.
    assert fp32_tolerance(expected, depth=3, reduction=64, steps=2) == {"rtol": 9.1552734375e-05,
                                                                        "atol": 3.662109375e-04}
    # helpers.py's example, one stage of 64-term sums: 16 * 8 = 128 eps.
    assert fp32_tolerance(expected, depth=1, reduction=64)["rtol"] == 1.52587890625e-05
    # 16 eps at a magnitude of 1/4: 4 eps = 2^-21.
    assert fp32_tolerance(expected, depth=1, reduction=1, magnitude=0.25)["atol"] == 4.76837158203125e-07


def test_assert_close_fp32_fails_just_above_the_bound_and_logs(tmp_path, monkeypatch):
    log = tmp_path / "tol.jsonl"
    monkeypatch.setenv("DSM_TOLERANCE_LOG", str(log))
    expected = torch.tensor([1.0, -3.0, 0.0])
    # By hand: rtol = 16 * sqrt(100) * 2 = 320 eps, atol = 3 x that (max |expected| = 3); the
    # bound at the element of size 3 is atol + rtol * 3 = 1920 eps = 1920 / 2^23.
    room = 2.288818359375e-04
    assert_close_fp32(expected + torch.tensor([0.0, 0.9 * room, 0.0]), expected, depth=2, reduction=100, what="in")
    with pytest.raises(AssertionError, match=r"(?s)out.*depth 2, reduction 100"):
        assert_close_fp32(expected + torch.tensor([0.0, 1.1 * room, 0.0]), expected, depth=2, reduction=100, what="out")
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["what"] for r in rows] == ["in", "out"]
    assert rows[0]["ratio"] == pytest.approx(0.9, rel=1e-5) and rows[1]["ratio"] == pytest.approx(1.1, rel=1e-5)
    assert rows[0]["test"].endswith("test_assert_close_fp32_fails_just_above_the_bound_and_logs")
    # Python floats (losses read from metrics.jsonl) compare too.
    assert_close_fp32([2.0, 3.0], [2.0, 3.0 * (1 + 1e-7)], depth=1, reduction=4)


def _capability(rank):
    return torch.backends.cpu.get_cpu_capability()


def test_forced_cpu_capability_reaches_forked_ranks_and_child_processes():
    here = torch.backends.cpu.get_cpu_capability()
    forced = os.environ.get("ATEN_CPU_CAPABILITY")
    if forced:  # the variable took effect in this process (a typo would fall back silently)
        assert here == forced.upper(), (forced, here)
    assert run_ranks(_capability, 2) == [here, here]
    child = subprocess.run([sys.executable, "-c", "import torch; print(torch.backends.cpu.get_cpu_capability())"],
                           capture_output=True, text=True, check=True)
    assert child.stdout.split()[-1] == here


def test_orphaned_deepspeed_shm_buffers_are_removed_live_ones_kept(tmp_path):
    """tests/conftest.py's session cleanup: a /dev/shm buffer no process maps goes, one a live
    process maps stays, and a fresh one stays (a rank may be about to attach)."""
    import mmap
    import os
    import time
    from pathlib import Path

    from tests.conftest import remove_orphaned_shm_buffers

    shm = Path("/dev/shm")
    if not shm.is_dir():
        pytest.skip("no /dev/shm")
    tag = f"deepspeed_test_{os.getpid()}"
    orphan, live, fresh = (shm / f"{tag}_{n}" for n in ("orphan", "live", "fresh"))
    for f in (orphan, live, fresh):
        f.write_bytes(b"\0" * 4096)
    old = time.time() - 3600
    os.utime(orphan, (old, old))
    os.utime(live, (old, old))
    with open(live, "r+b") as fh, mmap.mmap(fh.fileno(), 4096):
        removed = remove_orphaned_shm_buffers()
        # Gone, by this call or by a concurrent session's (make test-isa runs two pytest sessions
        # side by side, and either may clean the other's orphan first): the outcome is what counts.
        assert not orphan.exists()
        assert live.exists() and fresh.exists() and live.name not in removed and fresh.name not in removed
    for f in (live, fresh):
        f.unlink()
