"""Checkpoints that never lie about being complete, and resume onto the exact same trajectory.

Layout of `<run>/checkpoints/`:

    step_00000100/      DeepSpeed's files (model + ZeRO shards of every rank),
                        rng_rank<r>.pt (each rank's RNG states: dropout continues identically;
                        a multi-language job's per-language streams too),
                        meta.json (step, world size, ZeRO stage, data-loader position, resolved
                        config, and a manifest of every file with its size) -- written by rank 0
                        only after every rank finished: its presence is what makes the directory
                        a checkpoint.
    latest              the newest complete tag, replaced atomically after meta.json exists.

A step whose frozen parameters are rebuilt from its own inputs (adaptation: the body of
adapt.model_dir) saves only what it trains (`Checkpointer(exclude_frozen=True)`): meta.json then
records the frozen parameters' sha256 instead, and a resume over another body is refused.

A save first checks, on rank 0, that this process still owns the run directory
(run_lock.check_owner: an owner taken over while frozen must not write beside the new one), and
again right before meta.json: shards written in between by an owner taken over meanwhile stay an
incomplete directory, never loaded, removed by the new owner's next save. A run that lost its
directory touches nothing there on its way out (no clean-up of its partial checkpoint).

A run killed mid-save leaves a directory without meta.json, which is never loaded and is
removed by the next save; `latest` still names the previous complete checkpoint. A save that
fails (disk full, read-only or vanished file system) fails every rank with one line, removes its
partial directory and leaves `latest` and the earlier checkpoints as they were. Before resuming,
every file of the checkpoint is checked against the manifest and its archive checksums, so a
truncated or corrupt checkpoint is refused by name before DeepSpeed reads a byte of it.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import random
import shutil
import zipfile
from pathlib import Path

import numpy as np
import torch

from ds_minimodel.config import ModelConfig, migrate_renamed
from ds_minimodel.errors import UserError
from ds_minimodel.training import engine as ds
from ds_minimodel.training import faults
from ds_minimodel.training.run_lock import LostOwnershipError, check_owner

META = "meta.json"
LATEST = "latest"
RANK_STATE = "rank_state"  # the key of Checkpointer's rank_state in each rank's RNG file
# A failed write with less than this left on the device is reported as a full disk: torch.save
# does not raise ENOSPC but a RuntimeError ("unexpected pos ...") once the device is full.
LOW_SPACE_BYTES = 16 << 20


class CheckpointWriteError(UserError):
    """A checkpoint could not be written; the previous complete one is still `latest`."""


def tag_for(step: int) -> str:
    return f"step_{step:08d}"


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def is_complete(tag_dir: Path) -> bool:
    return (tag_dir / META).is_file()


def read_meta(tag_dir: Path) -> dict:
    try:
        return json.loads((tag_dir / META).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"checkpoint {tag_dir} has an unreadable {META}: {e}") from None


def discard(tag_dir: Path) -> None:
    """Remove a checkpoint directory, unmarking it first: a removal cut short leaves an incomplete
    directory (ignored, and removed by the next save), never a "complete" one missing shards."""
    (tag_dir / META).unlink(missing_ok=True)
    shutil.rmtree(tag_dir, ignore_errors=True)


def manifest(tag_dir: Path) -> dict[str, int]:
    """{relative path: size} of every file of a checkpoint but meta.json."""
    return {p.relative_to(tag_dir).as_posix(): p.stat().st_size
            for p in sorted(tag_dir.rglob("*")) if p.is_file() and p.name != META}


def fsync_tree(tag_dir: Path) -> None:
    """Flush every file to stable storage before meta.json declares them complete (a killed
    process loses nothing in the page cache, but a node that loses power would)."""
    for p in sorted(tag_dir.rglob("*")):
        if p.is_file():
            fd = os.open(p, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    fd = os.open(tag_dir, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def verify_files(tag_dir: Path, files: dict[str, int] | None, names: list[str]) -> list[str]:
    """Problems with `names` of a checkpoint: missing, wrong size, or a torch archive whose
    checksums fail (a truncated file has no zip directory; a flipped bit fails its CRC)."""
    problems = []
    for name in names:
        path = tag_dir / name
        if not path.is_file():
            problems.append(f"{name} is missing")
            continue
        if files is not None and path.stat().st_size != files[name]:
            problems.append(f"{name} has {path.stat().st_size} bytes, the manifest says {files[name]} (truncated?)")
            continue
        if path.suffix == ".pt":
            try:
                with zipfile.ZipFile(path) as z:
                    bad = z.testzip()
                if bad is not None:
                    problems.append(f"{name} is corrupt (checksum of {bad} fails)")
            except (zipfile.BadZipFile, OSError, EOFError) as e:
                problems.append(f"{name} is not a complete torch archive ({e})")
    return problems


def frozen_names(module: torch.nn.Module) -> set[str]:
    """Every state-dict name of a frozen parameter, aliases included (a body shared by several
    encoders appears under each of their prefixes)."""
    return {n for n, p in module.named_parameters(remove_duplicate=False) if not p.requires_grad}


def frozen_fingerprint(module: torch.nn.Module) -> str:
    """sha256 of the frozen parameters (names, shapes, dtypes, bytes), each tensor once."""
    h = hashlib.sha256()
    for name, p in sorted(module.named_parameters()):
        if not p.requires_grad:
            t = p.detach().cpu().contiguous()
            h.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy())  # the bytes, whatever the dtype (bf16 too)
    return h.hexdigest()


@contextlib.contextmanager
def frozen_left_out(module: torch.nn.Module):
    """module.state_dict() without any frozen parameter while inside. DeepSpeed's own
    exclude_frozen_parameters removes each parameter under its first name only, so a body shared
    by several encoders (MultiLanguageMLM) would still be saved under the others'."""
    names = frozen_names(module)

    def drop(_module, state, prefix, _metadata):
        for name in names:
            state.pop(prefix + name, None)

    handle = module.register_state_dict_post_hook(drop)
    try:
        yield
    finally:
        handle.remove()


def _load_without_frozen(src: dict, dst: torch.nn.Module) -> None:
    """Load a state dict saved without the frozen parameters: every other tensor must be there
    (the frozen ones are the model's own, built from the same body, as meta.json's sha256 says)."""
    result = dst.load_state_dict(src, strict=False)
    missing = sorted(set(result.missing_keys) - frozen_names(dst))
    if missing or result.unexpected_keys:
        raise UserError(f"the checkpoint's trained tensors do not fit this model (missing: {missing or 'none'}; "
                        f"unexpected: {sorted(result.unexpected_keys) or 'none'})")


def _describe_write_error(e: Exception, where: Path) -> str:
    """One phrase for a failed write: a full disk says so, whatever exception carried it."""
    try:
        free = shutil.disk_usage(where if where.exists() else where.parent).free
    except OSError:
        free = None
    errno_ = getattr(e, "errno", None)
    if errno_ == errno.ENOSPC or (errno_ is None and free is not None and free < LOW_SPACE_BYTES):
        return f"no space left on device ({free // 1024 if free is not None else '?'} KiB free)"
    if isinstance(e, OSError) and errno_ is not None:
        return f"{os.strerror(errno_)}: {e.filename}" if e.filename else os.strerror(errno_)
    return f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0]}"


def _gather(item, world_size: int) -> list:
    """Every rank's `item` (a collective), or [item] for a world of one (which includes rank 0
    consolidating on its own while its peers wait: no collective may start then)."""
    import torch.distributed as dist

    if world_size == 1 or not dist.is_initialized():
        return [item]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, item)
    return out


class Checkpointer:
    def __init__(self, run_dir: str | Path, dist: ds.DistInfo, keep_last: int = 2, rank_state=None,
                 exclude_frozen: bool = False):
        """rank_state: per-rank state beyond the RNG (an object with state_dict/load_state_dict,
        e.g. a multi-language job's RNG streams), saved in each rank's RNG file.
        exclude_frozen: save only the trained parameters (and buffers); the job rebuilds the
        frozen ones from its inputs, and a resume checks them against the saved sha256."""
        self.dir = Path(run_dir) / "checkpoints"
        self.dist = dist
        self.keep_last = keep_last
        self.rank_state = rank_state
        self.exclude_frozen = exclude_frozen

    # ---- reading ------------------------------------------------------------------------

    def complete_tags(self) -> list[str]:
        if not self.dir.is_dir():
            return []
        return sorted(p.name for p in self.dir.glob("step_*") if p.is_dir() and is_complete(p))

    def latest_tag(self) -> str | None:
        """The newest complete checkpoint. `latest` names it, except after a kill between its
        meta.json and the pointer's move: then the newer one still wins, since meta.json is
        only written once every rank's files are on disk (resuming from the older one would
        throw away finished steps). A `latest` naming an incomplete directory is never followed.
        """
        tags = self.complete_tags()
        return tags[-1] if tags else None

    # ---- writing ------------------------------------------------------------------------

    def save(self, engine, step: int, meta: dict) -> Path:
        """Collective: every rank calls it. Returns the checkpoint directory.

        Three phases, each ending in an exchange of every rank's error (if any), so a write that
        fails on one rank fails all of them together with the same CheckpointWriteError instead
        of leaving peers waiting in a barrier until the collective timeout.
        """
        tag = tag_for(step)
        tag_dir = self.dir / tag
        error = lost = None
        if self.dist.is_main:  # 1. the directory, without the debris of a save that was killed
            try:
                check_owner(self.dir.parent)
                self.dir.mkdir(parents=True, exist_ok=True)
                if tag_dir.exists() and not is_complete(tag_dir):
                    discard(tag_dir)
            except LostOwnershipError as e:
                lost = str(e)
            except OSError as e:
                error = e
        self._agree(error, tag_dir, lost)

        try:  # 2. every rank writes its DeepSpeed files and its RNG state
            with frozen_left_out(engine.module) if self.exclude_frozen else contextlib.nullcontext():
                # (the flag also keeps ZeRO-2 from saving the frozen parameters' fragments)
                engine.save_checkpoint(str(self.dir), tag=tag, client_state={"step": step}, save_latest=False,
                                       exclude_frozen_parameters=self.exclude_frozen)
        except (OSError, RuntimeError) as e:
            # DeepSpeed writes between its tag check and its closing barrier, where the other
            # ranks now wait: join that barrier, then report.
            error = e
            ds.barrier()
        if error is None:
            try:
                extra = {} if self.rank_state is None else {RANK_STATE: self.rank_state.state_dict()}
                torch.save({**rng_state(), **extra}, tag_dir / f"rng_rank{self.dist.rank}.pt")
                faults.inject("save_shards", step)
            except (OSError, RuntimeError) as e:
                error = e
        self._agree(error, tag_dir)

        if self.dist.is_main:  # 3. every rank's files are on disk: mark complete, move `latest`
            try:
                fsync_tree(tag_dir)
                full = {"step": step, "tag": tag, "world_size": self.dist.world_size, **meta,
                        "files": manifest(tag_dir)}
                if self.exclude_frozen:
                    # Hashed at every save (a fraction of a second for a 12-layer body): what it
                    # records is the body this checkpoint was trained over, not an assumption.
                    full["frozen"] = {"excluded": True, "sha256": frozen_fingerprint(engine.module)}
                # Last, after the manifest and the hash (a fraction of a second), right before
                # the write that makes the checkpoint count.
                check_owner(self.dir.parent)
                write_atomic(tag_dir / META, json.dumps(full, indent=2))
                faults.inject("save_meta", step)
                write_atomic(self.dir / LATEST, tag)
                self._prune()
            except LostOwnershipError as e:
                lost = str(e)
            except OSError as e:
                error = e
        self._agree(error, tag_dir, lost)
        return tag_dir

    def _agree(self, error: Exception | None, tag_dir: Path, lost: str | None = None) -> None:
        """Collective: raise the same CheckpointWriteError on every rank if any rank failed, or
        rank 0's LostOwnershipError (without touching the directory: it is another run's now)."""
        mine = (lost, None if error is None else _describe_write_error(error, tag_dir))
        gathered = _gather(mine, self.dist.world_size)
        lost = next((m for m, _ in gathered if m is not None), None)
        if lost is not None:
            raise LostOwnershipError(lost)
        failed = [(r, m) for r, (_, m) in enumerate(gathered) if m is not None]
        if not failed:
            return
        if self.dist.is_main and not is_complete(tag_dir):
            discard(tag_dir)  # frees the space the partial write took
        rank, why = failed[0]
        who = f" (rank {rank})" if self.dist.world_size > 1 else ""
        kept = self.latest_tag()
        raise CheckpointWriteError(f"could not write checkpoint {tag_dir.name} in {self.dir}{who}: {why}; "
                                   f"the last complete checkpoint is still {kept or 'none'}")

    def _prune(self) -> None:
        keep = set(self.complete_tags()[-self.keep_last:])
        for p in self.dir.glob("step_*"):
            if p.is_dir() and p.name not in keep:
                discard(p)

    # ---- resuming -----------------------------------------------------------------------

    def load(self, engine, expected_model: dict) -> dict | None:
        """Restore engine, optimizer, scheduler and RNG from the latest complete checkpoint.

        Returns its meta (step, data position, ...) or None when there is none. A checkpoint of
        another model shape or world size is refused before DeepSpeed touches anything.
        """
        tag = self.latest_tag()
        if tag is None:
            return None
        tag_dir = self.dir / tag
        meta = read_meta(tag_dir)
        saved_model = meta.get("config", {}).get("model")
        if isinstance(saved_model, dict) and "languages" not in saved_model:
            # Written by an older version: read its renamed keys (mid_head_layer) under today's names.
            saved_model = migrate_renamed(ModelConfig, saved_model)
        if saved_model != expected_model:
            diff = sorted(k for k in set(saved_model or {}) | set(expected_model)
                          if (saved_model or {}).get(k) != expected_model.get(k))
            raise UserError(f"checkpoint {tag_dir} is for a different model (differs in: {', '.join(diff)})")
        if meta.get("world_size") != self.dist.world_size:
            raise UserError(f"checkpoint {tag_dir} was written by {meta.get('world_size')} ranks; "
                            f"this run has {self.dist.world_size} (exact resume needs the same world size)")
        self.verify(tag_dir, meta)
        frozen_excluded = frozen_left_out_of(meta)
        if frozen_excluded and meta["frozen"].get("sha256") != frozen_fingerprint(engine.module):
            raise UserError(f"checkpoint {tag_dir} was trained over other frozen parameters than this run's "
                            "(its body changed since: the model directory was replaced or edited); "
                            "resume it over the body it started from, or start a new run")
        try:
            path, _ = engine.load_checkpoint(str(self.dir), tag=tag, load_optimizer_states=True,
                                             load_lr_scheduler_states=True,
                                             custom_load_fn=_load_without_frozen if frozen_excluded else None)
            rng = torch.load(tag_dir / f"rng_rank{self.dist.rank}.pt", weights_only=False)
        except Exception as e:  # whatever verify() could not see: DeepSpeed raises many types
            raise UserError(f"checkpoint {tag_dir} could not be loaded: {type(e).__name__}: "
                            f"{(str(e).strip().splitlines() or [''])[0]}") from None
        if path is None:
            raise UserError(f"DeepSpeed could not load checkpoint {tag_dir}")
        if self.rank_state is not None:
            if RANK_STATE not in rng:
                raise UserError(f"checkpoint {tag_dir} holds no {RANK_STATE} (it was written by another kind of job)")
            try:
                self.rank_state.load_state_dict(rng[RANK_STATE])
            except ValueError as e:
                raise UserError(f"checkpoint {tag_dir} does not fit this job: {e}") from None
        set_rng_state(rng)
        return meta

    def verify(self, tag_dir: Path, meta: dict) -> None:
        """Collective: check every file against the manifest (files split over the ranks, which
        read them in parallel) and fail every rank with the same line if any is bad."""
        files = meta.get("files")
        names = sorted(files) if files is not None else sorted(manifest(tag_dir))
        mine = verify_files(tag_dir, files, names[self.dist.rank::self.dist.world_size])
        problems = [p for rank_problems in _gather(mine, self.dist.world_size) for p in rank_problems]
        if problems:
            raise UserError(f"checkpoint {tag_dir} is damaged: {'; '.join(problems)} "
                            f"(remove that directory to fall back to an earlier checkpoint)")


def frozen_left_out_of(meta: dict) -> bool:
    """Whether a checkpoint (its meta.json) holds only the trained parameters."""
    return bool(meta.get("frozen", {}).get("excluded"))


def consolidate(checkpoint_dir: str | Path, tag: str | None = None) -> tuple[dict, dict]:
    """(fp32 state dict, meta) of a complete checkpoint, whatever its ZeRO stage: every tensor it
    holds (without the frozen parameters where `frozen_left_out_of(meta)`)."""
    checkpoint_dir = Path(checkpoint_dir)
    ck = Checkpointer(checkpoint_dir.parent, ds.DistInfo(0, 1, 0))
    tag = tag or ck.latest_tag()
    if tag is None or not is_complete(checkpoint_dir / tag):
        raise UserError(f"no complete checkpoint {'named ' + tag if tag else ''} in {checkpoint_dir}")
    meta = read_meta(checkpoint_dir / tag)
    ck.verify(checkpoint_dir / tag, meta)
    state = ds.consolidate_fp32(checkpoint_dir, tag, int(meta.get("zero_stage", 0)))
    return state, meta
