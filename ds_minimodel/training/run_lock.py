"""One owner per run directory: a second job never writes into a live run.

A training step (and a pipeline or study work directory) is owned, for the whole life of the
process that writes it (global rank 0), through two files inside the directory:

    .owner.lock      an exclusive flock(2), held until the owner exits. The kernel drops it when
                     the process dies, even on kill -9, so `--resume` after a crash just works.
    .owner.<G>.json  the owner record: host, pid, since (UTC), which mechanism it holds, and a
                     heartbeat its daemon thread rewrites every few seconds (tmp + rename).
                     G is a generation number that only grows, see "lease" below.

A second launch finds the flock taken and fails with one line naming the owner (host, pid,
since), before it writes anything. A clean exit removes both files; a killed owner leaves them.

A newcomer replaces a record only when its owner is provably gone: its heartbeat is stale, or it
held a flock on this host and either the kernel dropped that very lock (the record names the
lock file's inode, on which the newcomer now holds the flock: a kill -9 is resumed at once) or
its pid is dead. A flock taken on another inode proves nothing (someone deleted `.owner.lock`
while its owner runs, and the newcomer locked a new file), and a fresh record from another host
blocks whatever the flock says (flock is local to a node on NFS mounted with local_lock).

Lease mode, where flock is unavailable (flock raises ENOLCK / EOPNOTSUPP / ENOSYS, as on some
network file systems) or untrusted (set DSM_RUN_LOCK=lease, e.g. for NFS mounted with
local_lock, whose flock is not seen by other nodes): the owner record alone is the lock. A
newcomer takes it over only once it is stale (heartbeat older than DSM_RUN_LOCK_STALE_S, 60 s by
default), so after a crash a resume waits out that minute. Taking over is race-free: the
newcomer claims generation G+1 by creating `.owner.<G+1>.json` with link(2), which fails if the
file exists, so of two newcomers exactly one wins; records are never moved or overwritten by
anyone but their owner. An owner whose heartbeat thread finds a newer generation (it was frozen
past the timeout and taken over) stops the run rather than write beside the new owner.

The two modes see each other: a flock owner heartbeats its record too, so a lease-mode newcomer
refuses it, and a flock newcomer refuses a fresh record held by lease alone. Heartbeat ages
compare the owner's clock with the newcomer's: keep node clocks within seconds (NTP).

Fencing: an owner frozen past the timeout and taken over may wake up in the middle of its work,
before its heartbeat thread notices. So every write that matters (a checkpoint, a metrics line,
the final export) first calls `check_owner(directory)`, which raises LostOwnershipError once a
newer generation exists or our record names someone else (in lease mode, once our record is gone:
the record is the lease). It costs a listdir and a stat; the record is read only when it changed
(once a heartbeat). A file system offers no compare-and-write, so a process frozen in the
microseconds between that check and its write can still write once: the check makes the window
that short, it cannot close it.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import signal
import socket
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

from ds_minimodel.errors import InvalidValueError, UserError, check_creatable

LOCK_FILE = ".owner.lock"
_RECORD = re.compile(r"^\.owner\.(\d+)\.json$")
_RECORD_TMP = re.compile(r"^\.owner\.(\d+)\.json\.tmp\d+$")
MODE_ENV, STALE_ENV = "DSM_RUN_LOCK", "DSM_RUN_LOCK_STALE_S"
DEFAULT_STALE_S = 60.0
# How an owner that lost its lease ends: 130, as an interrupted run (cli.run_main's exit code for
# KeyboardInterrupt, which the usual path raises) also when SIGINT is ignored and it must stop hard.
LOST_OWNERSHIP_EXIT = 130
# flock errors that mean "this file system has no usable flock", not "someone holds it".
_NO_FLOCK = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS, errno.EINVAL}


class RunInUseError(UserError):
    """Another live process owns the directory."""


class LostOwnershipError(RunInUseError):
    """This process owned the directory and another one took it over (see "Fencing")."""


# The locks this process holds, by the directory's absolute and real paths: check_owner() finds
# them, so every writer of a run directory is fenced without being handed the lock.
_HELD: dict[str, "RunLock"] = {}


def check_owner(directory) -> None:
    """Before a write that matters into `directory`: raise LostOwnershipError if this process took
    its lock and has lost it since. Nothing if this process holds no lock of it (a rank other than
    0, a tool writing where no job runs)."""
    if not _HELD:
        return
    # abspath costs no system call; realpath (one lstat per component) only for another spelling
    lock = _HELD.get(os.path.abspath(directory)) or _HELD.get(os.path.realpath(directory))
    if lock is not None:
        lock.fence()


def _pid_alive(pid) -> bool:
    """Whether a process of this host has that pid; True where that cannot be told."""
    if not isinstance(pid, int) or pid <= 0:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, another user's
    return True


def is_lock_file(name: str) -> bool:
    """The lock's own files (and their temporaries), which do not make a directory "a run"."""
    return name.startswith(".owner.")


def record_path(directory: Path, gen: int) -> Path:
    return Path(directory) / f".owner.{gen}.json"


def utc(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def settings(env=os.environ) -> tuple[str, float]:
    """(mode, stale seconds) from the environment; bad values are bad input."""
    mode = env.get(MODE_ENV, "auto").strip().lower() or "auto"
    if mode not in ("auto", "lease"):
        raise InvalidValueError(f"{MODE_ENV}={env[MODE_ENV]!r}: expected auto (flock, lease where flock is "
                                "unsupported) or lease")
    raw = env.get(STALE_ENV, "").strip()
    try:
        stale = float(raw) if raw else DEFAULT_STALE_S
    except ValueError:
        stale = -1.0
    if not stale > 0:
        raise InvalidValueError(f"{STALE_ENV}={raw!r}: expected a positive number of seconds")
    return mode, stale


def newest_record(directory: Path) -> tuple[int, dict | None]:
    """(generation, record) of the newest owner record, (0, None) if there is none. A record
    being created right now may be empty: its file's mtime then stands in for a heartbeat."""
    for _ in range(20):
        gens = []
        try:
            names = os.listdir(directory)
        except FileNotFoundError:
            return 0, None
        for name in names:
            m = _RECORD.match(name)
            if m:
                gens.append(int(m.group(1)))
        if not gens:
            return 0, None
        gen = max(gens)
        path = record_path(directory, gen)
        try:
            text = path.read_text(encoding="utf-8")
            mtime = path.stat().st_mtime
        except FileNotFoundError:
            continue  # its owner just released it, or a newer owner removed it: look again
        try:
            record = json.loads(text)
        except ValueError:
            record = None
        if not isinstance(record, dict):
            record = {}
        if not isinstance(record.get("heartbeat"), (int, float)):
            record["heartbeat"] = mtime
        return gen, record
    return 0, None


def describe(record: dict | None) -> str:
    if not record or "pid" not in record:
        return "another process (its owner record is not written yet)"
    since = record.get("since")
    since = utc(since) if isinstance(since, (int, float)) else "?"
    return f"pid {record['pid']} on host {record.get('host', '?')} since {since}"


def live_owner(directory: Path, stale_after_s: float | None = None) -> str | None:
    """The recorded owner if it looks alive (fresh heartbeat, and on this host a running pid),
    for messages only: only the lock itself decides who may write."""
    stale_after_s = stale_after_s or settings()[1]
    gen, record = newest_record(Path(directory))
    if record is None or time.time() - record["heartbeat"] > stale_after_s:
        return None
    if record.get("host") == socket.gethostname() and not _pid_alive(record.get("pid")):
        return None
    return describe(record)


def _same_file(fd: int, path: Path) -> bool:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def _create_exclusive(path: Path, text: str) -> bool:
    """Create `path` holding `text`, atomically, only if it does not exist. link(2) publishes a
    complete file; where links are unsupported, O_EXCL creates it (empty for a moment)."""
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    except OSError as e:
        if e.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS, errno.EMLINK):
            raise
    finally:
        tmp.unlink(missing_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    return True


class RunLock:
    """Exclusive ownership of `directory`; `what` names it in messages (e.g. "train.out_dir").

    acquire() raises RunInUseError naming the owner, or returns self; release() (or leaving the
    `with` block) gives it up and removes the lock's files. mode / stale_after_s default to the
    environment (DSM_RUN_LOCK, DSM_RUN_LOCK_STALE_S) and are checked here, before any I/O.
    """

    def __init__(self, directory, what: str = "train.out_dir", *, mode: str | None = None,
                 stale_after_s: float | None = None, heartbeat_s: float | None = None):
        env_mode, env_stale = settings()
        self.dir = Path(directory)
        self.what = what
        self.mode = mode or env_mode
        self.stale_after_s = stale_after_s or env_stale
        self.heartbeat_s = heartbeat_s or min(5.0, self.stale_after_s / 4)
        self.mechanism: str | None = None  # "flock" or "lease" once held
        self.lost = threading.Event()  # set when another process took the lease over
        self._fd: int | None = None
        self._lock_file: list[int] | None = None  # [st_dev, st_ino] of the file we hold the flock on
        self._created = False  # whether we created that file
        self._pid = os.getpid()  # a forked child does not own its parent's lock
        self._checked = None  # (inode, mtime, size) of our record when last read and found ours
        self._gen = 0
        self._record: dict = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _keys(self) -> set[str]:
        return {os.path.abspath(self.dir), os.path.realpath(self.dir)}

    @property
    def lock_path(self) -> Path:
        return self.dir / LOCK_FILE

    # ---- acquiring ------------------------------------------------------------------------

    def acquire(self) -> "RunLock":
        assert self.mechanism is None, "RunLock.acquire called twice"
        if not self.dir.is_dir():
            check_creatable(self.dir, self.what)
            self.dir.mkdir(parents=True, exist_ok=True)
        mechanism = "lease"
        if self.mode == "auto" and self._take_flock():
            mechanism = "flock"
        try:
            self._claim_record(mechanism)
        except BaseException:
            self._drop_flock(unlink=self._created)  # refused: a lock file we created goes, another's stays
            raise
        self.mechanism = mechanism
        self._pid = os.getpid()
        for key in self._keys():
            _HELD[key] = self
        self._thread = threading.Thread(target=self._heartbeat, name=f"run-lock {self.dir}", daemon=True)
        self._thread.start()
        return self

    def _take_flock(self) -> bool:
        """Hold the flock (True), or False where this file system has none. A lock file unlinked
        by an owner releasing it between our open and flock is not the lock any more: retry."""
        for _ in range(100):
            opened = self._open_lock_file()
            if opened is None:
                continue
            fd, created = opened
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                current = _same_file(fd, self.lock_path)
                os.close(fd)
                if current:
                    raise self._in_use(self._owner_for_message(), f"lock {self.lock_path}") from None
                continue
            except OSError as e:
                os.close(fd)
                if e.errno in _NO_FLOCK:
                    if created:  # useless here: leave the directory as we found it
                        self.lock_path.unlink(missing_ok=True)
                    return False
                raise
            if _same_file(fd, self.lock_path):
                st = os.fstat(fd)
                self._fd, self._lock_file, self._created = fd, [st.st_dev, st.st_ino], created
                return True
            os.close(fd)
        raise RunInUseError(f"{self.what} {self.dir}: could not settle the lock {self.lock_path} "
                            "(it is being taken and released continuously)")

    def _open_lock_file(self) -> tuple[int, bool] | None:
        """(fd, whether we created the file), or None if it vanished meanwhile. Read-only: flock
        needs no write access, and a refused newcomer writes nothing."""
        flags = os.O_RDONLY | os.O_CLOEXEC
        try:
            return os.open(self.lock_path, flags | os.O_CREAT | os.O_EXCL, 0o644), True
        except FileExistsError:
            pass
        try:
            return os.open(self.lock_path, flags), False
        except FileNotFoundError:  # its owner removed it just now
            return None

    def _owner_for_message(self) -> dict | None:
        """The flock holder's record; it writes it a moment after taking the flock."""
        for _ in range(20):
            _, record = newest_record(self.dir)
            if record and "pid" in record:
                return record
            time.sleep(0.1)
        return None

    def _claim_record(self, mechanism: str) -> None:
        for _ in range(20):
            gen, record = newest_record(self.dir)
            if record is not None and not self._may_replace(record, mechanism):
                raise self._in_use(record, self._why_not(record, gen, mechanism))
            now = time.time()
            mine = {"host": socket.gethostname(), "pid": os.getpid(), "since": now, "heartbeat": now,
                    "lock": mechanism, "gen": gen + 1}
            if mechanism == "flock":
                mine["lock_file"] = self._lock_file
            if _create_exclusive(record_path(self.dir, gen + 1), json.dumps(mine)):
                self._gen, self._record = gen + 1, mine
                self._remove_older_records()
                return
            # Another newcomer claimed gen + 1 first: read its record on the next round.
        raise RunInUseError(f"{self.what} {self.dir}: could not claim its owner record (too many competing owners)")

    def _may_replace(self, record: dict, mechanism: str) -> bool:
        """Whether the recorded owner is provably gone (see the module's docstring)."""
        if time.time() - record.get("heartbeat", 0) > self.stale_after_s:
            return True
        if mechanism != "flock" or record.get("lock") != "flock" or record.get("host") != socket.gethostname():
            return False  # a fresh lease, or an owner elsewhere: our flock says nothing about it
        if record.get("lock_file") == self._lock_file:
            return True  # it held the flock we now hold, on the same file: the kernel dropped its lock
        # Its lock file was deleted (or the record predates lock_file): only a dead pid proves it gone.
        return not _pid_alive(record.get("pid"))

    def _why_not(self, record: dict, gen: int, mechanism: str) -> str:
        """Why a fresh record blocks us, for the refusal's line."""
        age = max(time.time() - record.get("heartbeat", 0), 0)
        fresh = f"heartbeat {age:.0f} s ago; stale after {self.stale_after_s:g} s, {STALE_ENV}"
        if mechanism == "flock" and record.get("host") not in (None, socket.gethostname()):
            return f"record {record_path(self.dir, gen)} of another host, {fresh}: our flock does not reach it"
        if mechanism == "flock" and record.get("lock") == "flock":
            return (f"lock {self.lock_path} was deleted while its owner runs; record {record_path(self.dir, gen)}, "
                    f"{fresh}")
        return f"lease {record_path(self.dir, gen)}, {fresh}"

    def _remove_older_records(self) -> None:
        """Earlier owners' records and their half-written temporaries (never a newer generation's:
        a newcomer may be publishing one right now)."""
        for name in os.listdir(self.dir):
            m = _RECORD.match(name) or _RECORD_TMP.match(name)
            if m and int(m.group(1)) < self._gen:
                (self.dir / name).unlink(missing_ok=True)

    def _in_use(self, record: dict | None, via: str) -> RunInUseError:
        return RunInUseError(f"{self.what} {self.dir} is in use by {describe(record)} ({via}); "
                             f"wait for it to end or choose another {self.what}")

    # ---- holding --------------------------------------------------------------------------

    def _taken_over(self) -> bool:
        """A newer generation exists, or the record of ours names another process: we were taken
        over. Our record merely gone (someone deleted it) is, under flock, rewritten by the next
        heartbeat; in lease mode the record is the lease, and without it anyone may have claimed
        (and released) the directory since. A listdir and a stat; the record is read only when it
        changed since it was last found ours."""
        try:
            names = os.listdir(self.dir)
        except FileNotFoundError:
            names = []
        if any(m and int(m.group(1)) > self._gen for m in map(_RECORD.match, names)):
            return True
        path = record_path(self.dir, self._gen)
        try:
            st = os.stat(path)
            if (st.st_ino, st.st_mtime_ns, st.st_size) == self._checked:
                return False
            record = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return self.mechanism == "lease"
        except ValueError:
            record = None  # being written by whoever claimed our generation after it was deleted
        if not isinstance(record, dict) or record.get("pid") != os.getpid() or \
                record.get("host") != socket.gethostname():
            return True
        self._checked = (st.st_ino, st.st_mtime_ns, st.st_size)
        return False

    def _lost_message(self) -> str:
        gen, record = newest_record(self.dir)
        to = f"{describe(record)} (its record {record_path(self.dir, gen).name})" if record is not None else \
            f"whoever claims it next (its owner record {record_path(self.dir, self._gen).name} was removed)"
        return f"lost ownership of {self.what} {self.dir} to {to}; stopping this run so that it does not write " \
               "beside the new owner"

    def fence(self) -> None:
        """Raise LostOwnershipError unless this process still owns the directory: called right
        before each write that matters (through check_owner)."""
        if self.mechanism is None or self._pid != os.getpid():
            return
        if self.lost.is_set() or self._taken_over():
            self.lost.set()
            raise LostOwnershipError(self._lost_message())

    def _heartbeat(self) -> None:
        warned = False
        while not self._stop.wait(self.heartbeat_s):
            if self.lost.is_set():  # fence() found it first and raised: the main thread is stopping
                return
            if self._taken_over():
                self.lost.set()
                print(f"error: {self._lost_message()}", file=sys.stderr, flush=True)
                if callable(signal.getsignal(signal.SIGINT)):
                    # A real SIGINT to the main thread: it also wakes a sleep or a blocking call
                    # (_thread.interrupt_main would wait for the next bytecode), and it unwinds.
                    signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)
                else:
                    # SIGINT ignored, as in any background job of a non-interactive shell
                    # (`nohup train ... &` in a script): a signal would change nothing, and the
                    # run would go on writing beside the new owner. Stop at once instead; what
                    # it was writing is incomplete anyway (a checkpoint counts only with meta.json).
                    os._exit(LOST_OWNERSHIP_EXIT)
                return
            try:
                _write_atomic(record_path(self.dir, self._gen),
                              json.dumps({**self._record, "heartbeat": time.time()}))
                warned = False
            except OSError as e:  # a full disk: the flock still holds; a lease ages (say so once)
                if not warned:
                    print(f"warning: could not renew the owner record of {self.dir}: {e}", file=sys.stderr,
                          flush=True)
                warned = True

    # ---- releasing ------------------------------------------------------------------------

    def release(self) -> None:
        """Give up ownership and remove the lock's files (not another owner's record)."""
        if self.mechanism is None:
            return
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        for key in self._keys():
            if _HELD.get(key) is self:
                del _HELD[key]
        if not self.lost.is_set():
            record_path(self.dir, self._gen).unlink(missing_ok=True)
        # Taken over, the lock file (if still ours) is the new owner's lock too (on another node's
        # flock): leave it.
        self._drop_flock(unlink=not self.lost.is_set())
        self.mechanism = None

    def _drop_flock(self, unlink: bool) -> None:
        if self._fd is None:
            return
        if unlink:  # while still holding it: a newcomer that opened this file will see it unlinked
            try:
                if _same_file(self._fd, self.lock_path):
                    self.lock_path.unlink()
            except OSError:
                pass
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
