"""One writer per run directory (ds_minimodel/training/run_lock.py).

The lock between real processes: a second owner is refused with a line naming the first (host,
pid, since), the lock goes with its owner (a clean exit, an exit without release, kill -9), a
lease is taken over only once stale and by exactly one of several racing newcomers, a frozen
owner that lost its lease stops itself, and a file system without flock falls back to the lease.
The races of issue 23: a run written between a job's check and its lock is refused once the lock
is held; a deleted lock file does not hand a live owner over (nor does a flock against a fresh
record of another host); an owner frozen past its lease and taken over writes nothing more.
Then the real launchers: a second `pretrain.py --resume` into a live run, plain and under the
deepspeed launcher with 2 ranks, exits 2 with the owner's line on every rank and leaves the run's
files byte for byte as they were; after kill -9 of the whole first launch, --resume continues
from its last checkpoint.
"""

import errno
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest

from ds_minimodel.training import run_lock
from ds_minimodel.training.run_lock import RunInUseError, RunLock
from tests.conftest import REPO
from tests.helpers import (
    ENV,
    expect_rejected,
    holder,
    newest_complete_step,
    stop,
    tree_hash,
)

PY = sys.executable
BIN = os.path.dirname(PY)
HOST = socket.gethostname()


def since_of(message: str) -> float:
    m = re.search(r"since (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) UTC", message)
    assert m, message
    return datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S").replace(tzinfo=timezone.utc).timestamp()


def assert_names_owner(message: str, pid: int, t0: float, t1: float, via: str) -> None:
    assert f"is in use by pid {pid} on host {HOST} since " in message, message
    assert t0 - 1 <= since_of(message) <= t1 + 1, f"'since' is not when the owner took the lock: {message}"
    assert via in message, message
    assert "\n" not in message


# ---- the lock between processes -------------------------------------------------------------

def test_second_owner_is_refused_naming_the_first(tmp_path):
    run = tmp_path / "run"
    t0 = time.time()
    owner = holder(run)
    t1 = time.time()
    try:
        for mode in ("auto", "lease"):  # a lease-mode newcomer sees a flock owner too (its heartbeat)
            with pytest.raises(RunInUseError) as exc:
                RunLock(run, mode=mode).acquire()
            assert_names_owner(str(exc.value), owner.pid, t0, t1, f"lock {run / '.owner.lock'}" if mode == "auto"
                               else "lease")
            assert str(exc.value).endswith("wait for it to end or choose another train.out_dir")
        assert owner.poll() is None
    finally:
        stop(owner)


def test_lock_goes_with_its_owner_on_exit_and_on_kill_9(tmp_path):
    run = tmp_path / "run"
    released = holder(run, then="release")
    assert released.wait(timeout=30) == 0
    assert sorted(os.listdir(run)) == [], "a released lock left its files"

    exited = holder(run, then="exit")  # exits without release(): the kernel drops the flock
    assert exited.wait(timeout=30) == 0
    with RunLock(run) as lock:
        assert lock.mechanism == "flock"
    assert sorted(os.listdir(run)) == []

    killed = holder(run)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    t0 = time.monotonic()
    with RunLock(run) as lock:  # at once: the dead owner's fresh heartbeat does not matter under flock
        assert time.monotonic() - t0 < 5
        record = json.loads(next(run.glob(".owner.*.json")).read_text())
        assert record["pid"] == os.getpid() and record["host"] == HOST
        assert len(list(run.glob(".owner.*.json"))) == 1, "the dead owner's record was not replaced"


@pytest.mark.parametrize("sigint", ["default", "ignore"])
def test_fresh_lease_is_refused_and_a_stale_one_taken_over_once(sigint, tmp_path):
    """A lease owner frozen (SIGSTOP) past the stale timeout is taken over; when it wakes up it
    finds the newer owner and stops instead of writing beside it: through KeyboardInterrupt, or,
    where SIGINT is ignored (`nohup ... &` from a script), by exiting at once."""
    run = tmp_path / "run"
    t0 = time.time()
    owner = holder(run, mode="lease", stale=1.5, sigint=sigint)
    t1 = time.time()
    try:
        with pytest.raises(RunInUseError) as exc:
            RunLock(run, mode="lease", stale_after_s=1.5).acquire()
        assert_names_owner(str(exc.value), owner.pid, t0, t1, f"lease {run / '.owner.1.json'}")
        assert not (run / ".owner.lock").exists(), "lease mode must not rely on flock"
        owner.send_signal(signal.SIGSTOP)
        time.sleep(2.5)
        with RunLock(run, mode="lease", stale_after_s=1.5) as lock:
            assert lock.mechanism == "lease"
            owner.send_signal(signal.SIGCONT)
            # Generous: on a loaded machine the woken owner may wait for a core (its own check takes
            # one heartbeat, 0.375 s, once it runs).
            try:
                code = owner.wait(timeout=60)
            except subprocess.TimeoutExpired:
                code = None
            assert code == run_lock.LOST_OWNERSHIP_EXIT, f"the owner that lost its lease kept running (exit {code})"
            assert "lost ownership" in owner.stderr.read()
            record = json.loads((run / ".owner.2.json").read_text())
            assert record["pid"] == os.getpid()
            assert not (run / ".owner.1.json").exists()
        assert sorted(os.listdir(run)) == []
    finally:
        owner.send_signal(signal.SIGCONT)
        stop(owner)


# Every racer reads the stale record at time T, then claims at T + 1 s: the claims collide.
RACER = """
import sys, time
from ds_minimodel.training import run_lock
from ds_minimodel.training.run_lock import RunLock, RunInUseError
start = float(sys.argv[3])
read, first = run_lock.newest_record, [True]

def read_then_wait(directory):
    found = read(directory)
    if first[0]:
        first[0] = False
        time.sleep(max(start + 1 - time.time(), 0))
    return found

run_lock.newest_record = read_then_wait
lock = RunLock(sys.argv[1], mode=sys.argv[2], stale_after_s=30)
time.sleep(max(start - time.time(), 0))
try:
    lock.acquire()
except RunInUseError:
    print("refused", flush=True)
    sys.exit(0)
print("won", flush=True)
sys.stdin.read()  # hold it until the test has heard from everyone
lock.release()
"""


@pytest.mark.parametrize("mode", ["auto", "lease"])
def test_racing_newcomers_take_a_stale_run_over_exactly_once(tmp_path, mode):
    run = tmp_path / "run"
    run.mkdir()
    dead = {"host": "elsewhere", "pid": 1, "since": time.time() - 3600, "heartbeat": time.time() - 3600,
            "lock": "lease", "gen": 4}
    (run / ".owner.4.json").write_text(json.dumps(dead))
    start = time.time() + 2.0  # all start together: the claims race
    procs = [subprocess.Popen([PY, "-c", RACER, str(run), mode, str(start)], cwd=REPO, env=ENV, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(6)]
    try:
        results = sorted(p.stdout.readline().strip() for p in procs)
        assert results == ["refused"] * 5 + ["won"], (results, [p.stderr.read() for p in procs if p.poll()])
        assert len(list(run.glob(".owner.*.json"))) == 1, "the stale record was not replaced"
    finally:
        for p in procs:
            p.stdin.close()
            p.wait(timeout=30)
    assert sorted(os.listdir(run)) == [], "the winner's release left files behind"


def test_file_system_without_flock_falls_back_to_the_lease(tmp_path, monkeypatch):
    def no_flock(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(run_lock.fcntl, "flock", no_flock)
    run = tmp_path / "run"
    t0 = time.time()
    with RunLock(run) as lock:
        t1 = time.time()
        assert lock.mechanism == "lease"
        assert sorted(os.listdir(run)) == [".owner.1.json"]  # no lock file left where flock is useless
        with pytest.raises(RunInUseError) as exc:
            RunLock(run).acquire()
        assert_names_owner(str(exc.value), os.getpid(), t0, t1, f"lease {run / '.owner.1.json'}")
    assert sorted(os.listdir(run)) == []


def test_new_run_into_a_live_run_names_its_owner(tmp_path):
    """Without --resume a directory holding a run is refused anyway; while its owner lives the
    line names the owner instead of suggesting --resume."""
    from ds_minimodel.training.job import check_run_dir

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("train: {}\n")
    t0 = time.time()
    owner = holder(run)
    t1 = time.time()
    try:
        with pytest.raises(run_lock.UserError) as exc:
            check_run_dir(run, resume=False)
        assert_names_owner(str(exc.value), owner.pid, t0, t1, "already holds a run and is in use by")
        assert "--resume" not in str(exc.value)
    finally:
        stop(owner)
    with pytest.raises(run_lock.UserError, match="already holds a run; pass --resume"):
        check_run_dir(run, resume=False)


def test_a_run_that_fails_in_its_loop_gives_the_directory_up(tiny_corpus, tmp_path):
    """A NaN loss at step 4 ends the run with an exception: its lock files are gone and the
    directory can be owned at once."""
    from tests.distributed import run_ranks
    from tests.helpers import pretrain_with_nan_at

    out = tmp_path / "run"
    with pytest.raises(AssertionError, match="non-finite loss at step 4"):
        run_ranks(pretrain_with_nan_at, 1, args=(tiny_corpus, out, 4))
    assert not [p.name for p in out.iterdir() if p.name.startswith(".owner")]
    with RunLock(out) as lock:
        assert lock.mechanism == "flock"


def test_bad_lock_settings_are_bad_input(tmp_path, capsys, monkeypatch, tiny_corpus):
    from launchers.pretrain import main

    out = tmp_path / "run"
    out.mkdir()
    argv = ["--config", str(REPO / "configs/pretrain-tiny.yaml"), f"data.path={tiny_corpus}", f"train.out_dir={out}"]
    monkeypatch.setenv(run_lock.MODE_ENV, "nfs")
    expect_rejected(capsys, main, argv, "DSM_RUN_LOCK='nfs'", "auto", "lease", watch=[out])
    monkeypatch.setenv(run_lock.MODE_ENV, "lease")
    monkeypatch.setenv(run_lock.STALE_ENV, "0")
    expect_rejected(capsys, main, argv, "DSM_RUN_LOCK_STALE_S='0'", "positive", watch=[out])


# ---- the real launchers ---------------------------------------------------------------------

def launch_args(data, out, *extra):
    return ["launchers/pretrain.py", "--deepspeed", "ds_configs/z0.json", "--resume", "--config", "configs/pretrain-tiny.yaml",
            f"data.path={data}", f"train.out_dir={out}", "train.eval_every=1000000", "train.save_every=20", *extra]


def wait_until_training(proc, out: Path, min_checkpoint: int, timeout: float = 180) -> None:
    """Until the launch has a complete checkpoint at or past min_checkpoint."""
    deadline = time.monotonic() + timeout
    while newest_complete_step(out) < min_checkpoint:
        assert proc.poll() is None, f"the first launch ended (exit {proc.returncode})"
        assert time.monotonic() < deadline, "the first launch did not start training"
        time.sleep(0.2)


def train_steps(out: Path) -> list[int]:
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["step"] for line in lines if '"kind": "train"' in line]


def second_launch(cmd, timeout=120):
    proc = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=timeout)
    errors = [line for line in proc.stderr.splitlines() if line.strip()]
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr[-3000:]
    return proc.returncode, errors


def kill_group(proc) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def test_second_launch_into_a_live_run_is_refused_then_resume_after_kill_9(tiny_corpus, tmp_path):
    out = tmp_path / "run"
    cmd = [PY, *launch_args(tiny_corpus, out, "train.steps=1000000")]
    t0 = time.time()
    first = subprocess.Popen(cmd, cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
    try:
        wait_until_training(first, out, 40)
        t1 = time.time()
        os.killpg(first.pid, signal.SIGSTOP)  # frozen, still owning: its files must not change at all
        before = tree_hash(out)
        code, errors = second_launch(cmd)
        assert code == 2 and len(errors) == 1 and errors[0].startswith("error: "), errors
        assert_names_owner(errors[0], first.pid, t0, t1, f"lock {out / '.owner.lock'}")
        assert tree_hash(out) == before, "the refused launch changed the run's files"
        os.killpg(first.pid, signal.SIGCONT)
        time.sleep(1.0)
        assert first.poll() is None
    finally:
        kill_group(first)  # the whole launch, kill -9: a crash

    steps = train_steps(out)
    assert steps == list(range(1, len(steps) + 1)), "metrics.jsonl has records of more than one writer"
    newest = newest_complete_step(out)
    assert newest >= 40
    proc = subprocess.run([PY, *launch_args(tiny_corpus, out, f"train.steps={newest + 4}")], cwd=REPO, env=ENV,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "resume"] == [newest]
    assert train_steps(out) == list(range(1, newest + 5))
    assert (out / "final" / "model.pt").is_file()
    assert not [p.name for p in out.iterdir() if p.name.startswith(".owner")], "the finished run kept its lock"


def _pretrain_rank(rank, data, out):
    from ds_minimodel.config import PretrainConfig, load_config
    from ds_minimodel.steps import pretrain

    cfg = load_config(PretrainConfig, REPO / "configs/pretrain-tiny.yaml",
                      [f"data.path={data}", f"train.out_dir={out}", "train.collective_timeout_s=30"])
    pretrain.run(cfg, str(REPO / "ds_configs/z0.json"))


def test_every_rank_of_a_refused_job_fails_alike(tiny_corpus, tmp_path):
    """Rank 0 alone takes the lock; rank 1 learns the verdict and fails with the same line by
    itself (no peer is killed for it, none waits for a collective timeout). A directory holding
    nothing but a lock is no run: it is the lock, not "already holds a run", that refuses."""
    from tests.distributed import run_ranks

    out = tmp_path / "run"
    owner = holder(out)
    try:
        t0 = time.monotonic()
        with pytest.raises(AssertionError) as exc:
            run_ranks(_pretrain_rank, 2, args=(tiny_corpus, out), timeout=120, kill_on_error=False)
        assert time.monotonic() - t0 < 30, "a rank waited for a collective timeout"
        parts = re.split(r"^rank (\d+) failed:\n", str(exc.value), flags=re.M)[1:]
        first_lines = {int(rank): text.splitlines()[0] for rank, text in zip(parts[::2], parts[1::2])}
        assert sorted(first_lines) == [0, 1], str(exc.value)
        for line in first_lines.values():  # RunInUseError on rank 0, the same line as a UserError on rank 1
            assert re.fullmatch(r"\w*Error: " + re.escape(f"train.out_dir {out} is in use by pid {owner.pid} ")
                                + ".*", line), str(exc.value)
        assert len({line.split(": ", 1)[1] for line in first_lines.values()}) == 1
        assert sorted(p.name for p in out.iterdir()) == [".owner.1.json", ".owner.lock"]
    finally:
        stop(owner)


def test_second_deepspeed_launch_is_refused(tiny_corpus, tmp_path):
    from tests.distributed import free_port

    out = tmp_path / "run"

    def cmd():
        return [f"{BIN}/deepspeed", "--num_gpus", "2", "--master_port", str(free_port()),
                *launch_args(tiny_corpus, out, "train.steps=1000000")]

    t0 = time.time()
    first = subprocess.Popen(cmd(), cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
    try:
        wait_until_training(first, out, 20)
        t1 = time.time()
        os.killpg(first.pid, signal.SIGSTOP)
        before = tree_hash(out)
        code, errors = second_launch(cmd())
        # Both ranks fail alike, but the launcher kills rank 1 as soon as it sees rank 0 exit, so
        # rank 1's line may be cut off (each rank's own failure: test_every_rank_of_a_refused_job_fails_alike).
        assert code == 2 and errors and len(set(errors)) == 1 and errors[0].startswith("error: "), errors
        owner = int(re.search(r"in use by pid (\d+)", errors[0]).group(1))
        argv = Path(f"/proc/{owner}/cmdline").read_bytes().split(b"\0")
        assert b"--local_rank=0" in argv and os.getsid(owner) == first.pid, \
            "the owner named is not rank 0 of the first launch"
        assert_names_owner(errors[0], owner, t0, t1, f"lock {out / '.owner.lock'}")
        assert tree_hash(out) == before, "the refused launch changed the run's files"
    finally:
        kill_group(first)
    steps = train_steps(out)
    assert steps == list(range(1, len(steps) + 1))


def test_second_pipeline_into_a_live_work_dir_is_refused(tmp_path, capsys):
    """The pipeline locks its work directory for its whole run (its steps lock their own)."""
    from launchers.pipeline import main

    work = tmp_path / "work"
    (work / "logs").mkdir(parents=True)
    (work / "logs" / "pretrain.log").write_text("the first pipeline's log\n")
    t0 = time.time()
    owner = holder(work)
    t1 = time.time()
    try:
        line = expect_rejected(capsys, main, ["--work", str(work), "--data-root", str(tmp_path / "data")],
                               f"--work {work} is in use", watch=[work])
        assert_names_owner(line, owner.pid, t0, t1, f"lock {work / '.owner.lock'}")
    finally:
        stop(owner)


# ---- issue 23: the check-then-lock gap, a deleted lock file, fencing ---------------------------

# A job whose process group forms only once the test says so (a line on stdin): between its check
# of the run directory and its lock, another job can start and finish a run there.
LATE_JOB = """
import sys
from ds_minimodel.training import engine
start = engine.init_distributed

def late(*args, **kwargs):
    print("checked", flush=True)
    sys.stdin.readline()
    return start(*args, **kwargs)

engine.init_distributed = late
from launchers.pretrain import main
main(sys.argv[1:])
"""


def test_a_run_written_between_the_check_and_the_lock_is_refused(tiny_corpus, tmp_path):
    """Two jobs (a new one and a --resume one) check an empty directory; run A then starts and
    finishes there before their process groups form. Once they hold the lock, each must find
    that the directory is no longer what it checked and refuse, writing nothing."""
    out = tmp_path / "run"
    args = ["--deepspeed", "ds_configs/z0.json", "--config", "configs/pretrain-tiny.yaml", f"data.path={tiny_corpus}",
            f"train.out_dir={out}"]
    late = {kind: subprocess.Popen([PY, "-c", LATE_JOB, *extra, *args], cwd=REPO, env=ENV, stdin=subprocess.PIPE,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for kind, extra in (("new", []), ("resume", ["--resume"]))}
    try:
        for kind, proc in late.items():
            line = proc.stdout.readline()
            assert line.strip() == "checked", (kind, line, proc.stderr.read() if proc.poll() is not None else "")
        from tests.distributed import run_ranks

        run_ranks(_pretrain_rank, 1, args=(tiny_corpus, out))  # run A, start to finish
        assert (out / "final" / "model.pt").is_file()
        before = tree_hash(out)
        for kind, proc in late.items():  # one after the other: each meets the directory, not the other's lock
            stdout, stderr = proc.communicate("go\n", timeout=180)
            errors = [line for line in stderr.splitlines() if line.strip()]
            assert proc.returncode == 2 and len(errors) == 1, (kind, proc.returncode, stderr[-3000:])
            assert errors[0].startswith(f"error: train.out_dir {out} ") and "another job" in errors[0], (kind, errors)
            assert tree_hash(out) == before, f"the {kind} job wrote into run A's directory"
    finally:
        for proc in late.values():
            stop(proc)
    assert not [p.name for p in out.iterdir() if p.name.startswith(".owner")], "a refused job left its lock"


def test_a_deleted_lock_file_does_not_hand_a_live_owner_over(tmp_path):
    """A cleanup script deletes .owner.lock while its owner runs: a newcomer's flock on a new file
    proves nothing about the owner, whose record is fresh and whose pid lives."""
    run = tmp_path / "run"
    t0 = time.time()
    owner = holder(run)
    t1 = time.time()
    try:
        (run / ".owner.lock").unlink()
        with pytest.raises(RunInUseError) as exc:
            RunLock(run).acquire()
        assert_names_owner(str(exc.value), owner.pid, t0, t1, f"lock {run / '.owner.lock'}")
        time.sleep(2.5)  # the owner heartbeats every second: it must not find a newer owner
        assert owner.poll() is None, f"the live owner stopped: {owner.stdout.read()} {owner.stderr.read()}"
        names = sorted(n for n in os.listdir(run) if ".tmp" not in n)
        assert names == [".owner.1.json"], f"the refused newcomer left files or replaced the record: {names}"
        assert json.loads((run / ".owner.1.json").read_text())["pid"] == owner.pid
    finally:
        stop(owner)


def test_a_fresh_record_from_another_host_blocks_whatever_the_flock_says(tmp_path):
    """flock is local to a node on NFS mounted with local_lock: an owner on another host holds
    nothing here. Its fresh heartbeat blocks; once stale, it is taken over."""
    run = tmp_path / "run"
    run.mkdir()
    (run / ".owner.lock").touch()
    st = (run / ".owner.lock").stat()
    now = time.time()
    other = {"host": f"not-{HOST}", "pid": os.getpid(), "since": now - 10, "heartbeat": now, "lock": "flock",
             "gen": 3, "lock_file": [st.st_dev, st.st_ino]}
    (run / ".owner.3.json").write_text(json.dumps(other))
    with pytest.raises(RunInUseError, match=f"is in use by pid {os.getpid()} on host not-{HOST} since "):
        RunLock(run).acquire()
    assert json.loads((run / ".owner.3.json").read_text()) == other
    assert sorted(os.listdir(run)) == [".owner.3.json", ".owner.lock"]

    (run / ".owner.3.json").write_text(json.dumps({**other, "heartbeat": now - 120}))
    with RunLock(run, stale_after_s=60) as lock:
        assert lock.mechanism == "flock"
        assert json.loads((run / ".owner.4.json").read_text())["pid"] == os.getpid()


def test_a_dead_owner_whose_lock_file_was_deleted_is_replaced_at_once(tmp_path):
    """kill -9, then the lock file is deleted too: same host, pid gone, so no stale wait."""
    run = tmp_path / "run"
    killed = holder(run)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    (run / ".owner.lock").unlink()
    t0 = time.monotonic()
    with RunLock(run) as lock:
        assert time.monotonic() - t0 < 5
        assert lock.mechanism == "flock"
        assert [json.loads(p.read_text())["pid"] for p in run.glob(".owner.*.json")] == [os.getpid()]


# A lease owner that appends a metrics line every 50 ms and says when it wrote each. Interrupted,
# it logs where it stopped, as training scripts often do: the heartbeat's stop (a SIGINT) then
# leads to a write too, so only a check at the write itself keeps the directory clean (without
# that handler the heartbeat usually wins the race against the next write, and a test without
# fencing passes by luck).
WRITER = """
import sys, time
from ds_minimodel.training.metrics import MetricsLogger
from ds_minimodel.training.run_lock import RunLock
run = sys.argv[1]
lock = RunLock(run, mode="lease", stale_after_s=1.5, heartbeat_s=0.375).acquire()
logger = MetricsLogger(run, is_main=True, total_steps=10**9, progress=False)
step = 0
try:
    while True:
        step += 1
        logger.log("train", step, {})
        print("wrote", step, time.time(), flush=True)
        time.sleep(0.05)
except KeyboardInterrupt:
    logger.log("interrupted", step, {})
    raise
"""


def _stop_while_asleep(proc) -> None:
    """SIGSTOP `proc` during one of its 50 ms sleeps (never between a check and its write: a
    fence cannot close that window on a file system, see run_lock.py)."""
    for _ in range(200):
        line = proc.stdout.readline()
        assert line.startswith("wrote"), (line, proc.stderr.read() if proc.poll() is not None else "")
        wrote = float(line.split()[2])
        if int(line.split()[1]) < 3 or time.time() - wrote > 0.02:
            continue
        proc.send_signal(signal.SIGSTOP)
        if time.time() - wrote < 0.04:
            return
        proc.send_signal(signal.SIGCONT)
    raise AssertionError("could not stop the writer while it slept")


def test_a_frozen_lease_owner_writes_nothing_after_its_takeover(tmp_path):
    """Frozen (SIGSTOP) past the stale timeout, taken over, resumed: its next write must find
    the newer generation first, whichever of its threads runs first."""
    run = tmp_path / "run"
    writer = subprocess.Popen([PY, "-c", WRITER, str(run)], cwd=REPO, env=ENV, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True,
                              preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        _stop_while_asleep(writer)
        metrics = run / "metrics.jsonl"
        before = metrics.read_bytes()
        time.sleep(2.5)  # past the 1.5 s stale timeout
        taken = time.time()
        with RunLock(run, mode="lease", stale_after_s=1.5) as lock:
            assert lock.mechanism == "lease"
            writer.send_signal(signal.SIGCONT)
            try:
                writer.wait(timeout=60)
            except subprocess.TimeoutExpired:
                pass
            assert writer.poll() is not None, "the owner that lost its lease kept running"
            late = [r for r in map(json.loads, metrics.read_text().splitlines()) if r["time"] >= taken]
            assert metrics.read_bytes() == before, f"written after the takeover: {late}"
            assert metrics.stat().st_mtime < taken
            assert "lost ownership" in writer.stderr.read()
    finally:
        writer.send_signal(signal.SIGCONT)
        stop(writer)


def _tiny_engine():
    """A one-layer model on the torch engine: enough for a checkpoint to have something to save."""
    import torch

    from ds_minimodel.config import OptimConfig
    from ds_minimodel.training.torch_engine import TorchEngine

    return TorchEngine(torch.nn.Linear(2, 2), {"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1},
                       OptimConfig(lr=1e-2, warmup_steps=0), total_steps=4)


def _take_over(run):
    """A newcomer's takeover of a lease: the next generation's record, fresh, of another pid."""
    now = time.time()
    (run / ".owner.2.json").write_text(json.dumps({"host": HOST, "pid": 1, "since": now, "heartbeat": now,
                                                   "lock": "lease", "gen": 2}))


def test_checkpoints_and_metrics_lines_are_fenced(tmp_path):
    """While the lease is this process's, a checkpoint and a metrics line are written; once a
    newer generation exists (a takeover), neither writes a byte, even before the heartbeat
    thread notices (here it never runs)."""
    from ds_minimodel.training.checkpoint import Checkpointer
    from ds_minimodel.training.engine import DistInfo
    from ds_minimodel.training.metrics import MetricsLogger

    run = tmp_path / "run"
    lock = RunLock(run, mode="lease", heartbeat_s=3600).acquire()
    try:
        engine = _tiny_engine()
        checkpointer = Checkpointer(run, DistInfo(0, 1, 0))
        logger = MetricsLogger(run, is_main=True, total_steps=4, progress=False)
        checkpointer.save(engine, 1, {})
        logger.log("train", 1, {})
        assert checkpointer.latest_tag() == "step_00000001"
        _take_over(run)  # a newcomer's takeover: the next generation's record
        before = tree_hash(run)
        with pytest.raises(RunInUseError, match="lost ownership of train.out_dir .* to pid 1 on host"):
            checkpointer.save(engine, 2, {})
        with pytest.raises(RunInUseError, match="lost ownership"):
            logger.log("train", 2, {})
        assert tree_hash(run) == before
    finally:
        lock.release()
    assert (run / ".owner.2.json").is_file(), "the old owner removed the new owner's record"


def test_a_takeover_while_meta_json_is_prepared_stops_the_save_before_it(tmp_path, monkeypatch):
    """The last ownership check comes after everything a save computes before meta.json (the
    manifest, the frozen body's hash: a fraction of a second), not before it: a takeover during
    that work must leave the checkpoint incomplete (no meta.json), never a complete one in the new
    owner's directory."""
    from ds_minimodel.training import checkpoint
    from ds_minimodel.training.checkpoint import Checkpointer
    from ds_minimodel.training.engine import DistInfo

    run = tmp_path / "run"
    lock = RunLock(run, mode="lease", heartbeat_s=3600).acquire()
    try:
        engine = _tiny_engine()
        checkpointer = Checkpointer(run, DistInfo(0, 1, 0))
        real_manifest = checkpoint.manifest

        def manifest_then_taken_over(tag_dir):
            out = real_manifest(tag_dir)
            _take_over(run)  # a newcomer's takeover while this save lists its files
            return out

        monkeypatch.setattr(checkpoint, "manifest", manifest_then_taken_over)
        with pytest.raises(RunInUseError, match="lost ownership"):
            checkpointer.save(engine, 1, {})
        assert not (run / "checkpoints" / "step_00000001" / "meta.json").exists()
        assert not (run / "checkpoints" / "latest").exists()
    finally:
        lock.release()


def test_a_resume_check_beside_a_live_run_survives_its_files_vanishing(tmp_path, monkeypatch):
    """check_run_dir lists a run directory that its live owner may be writing (a --resume launched
    beside it, refused only later by the lock): a file the owner replaces or prunes between the
    listing and its stat (latest.tmpPID, a pruned step_...) is gone, not a crash with a traceback."""
    from ds_minimodel.training import job

    run = tmp_path / "run"
    (run / "checkpoints" / "step_00000001").mkdir(parents=True)
    (run / "config.yaml").write_text("x: 1\n")
    vanishing = [run / "checkpoints" / "latest.tmp4242", run / "metrics.jsonl.tmp4242"]
    for p in vanishing:
        p.write_text("step_00000001")
    real_scandir = os.scandir

    def scandir_then_the_owner_writes(path):
        entries = list(real_scandir(path))
        for p in vanishing:  # the live owner's os.replace, right after our listing
            p.unlink(missing_ok=True)
        return iter(entries)

    monkeypatch.setattr(job.os, "scandir", scandir_then_the_owner_writes)
    seen = job.check_run_dir(run, resume=True)
    assert "config.yaml" in seen and os.path.join("checkpoints", "step_00000001") in seen
    assert not any("tmp4242" in name for name in seen), seen
