"""Write an output directory all at once: build it in a hidden sibling, then move it into place.

Datasets, language packs and Hugging Face exports are directories of several files that only
make sense together. A crash, a full disk or a bad input half-way must never leave a half-written
one where the next step would read it, nor destroy the previous one:

    with staged_dir(out) as tmp:
        ...write every file into tmp...
    # out now holds exactly what was written; an earlier out was replaced only at this point

The staging directory lives next to `out` (same file system, so the final move is a rename) and
gets the permissions an ordinary mkdir would have: outputs are shared data (other users, other
ranks of a job), while `tempfile.mkdtemp` makes them private.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from ds_minimodel.errors import InvalidValueError, check_creatable


def check_empty_or_overwrite(out: str | os.PathLike, overwrite: bool, what: str = "output directory") -> None:
    """Before any work: `out` is absent, empty, or may be replaced (`overwrite`), and creatable."""
    out = Path(out)
    if out.exists():
        if not out.is_dir():
            raise InvalidValueError(f"{what} {out} exists and is not a directory")
        if any(out.iterdir()) and not overwrite:
            raise InvalidValueError(f"{what} {out} exists and is not empty (pass --overwrite to replace it)")
    check_creatable(out, what)  # before hours of work, not after


def _umask_modes(root: Path) -> None:
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(root, 0o777 & ~umask)
    for path in root.rglob("*"):
        if path.is_dir():
            os.chmod(path, 0o777 & ~umask)
        elif path.is_file():
            os.chmod(path, 0o666 & ~umask)


@contextlib.contextmanager
def staged_dir(out: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty staging directory; on success it becomes `out` (replacing an existing `out`
    only then, and putting it back if the final move fails); on any exception it is removed and
    `out` is left as it was."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        yield tmp
        _umask_modes(tmp)
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.rename(out, old / "previous")
            try:
                os.rename(tmp, out)
            except BaseException:
                os.rename(old / "previous", out)
                raise
            finally:
                shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone already after a successful move
