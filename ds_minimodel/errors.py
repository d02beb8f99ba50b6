"""Errors caused by what the user gave us (a path, a flag, a config value), not by a bug.

Launchers catch `UserError`, print `error: <message>` to stderr and exit with status 2, so the
message must stand alone on one line and name the file, key or value at fault. Internal
invariants use `assert` instead: those are bugs and deserve a traceback.

The subclasses also derive from the matching built-in exception, so callers that already catch
`ValueError` or `FileNotFoundError` keep working.
"""


class UserError(Exception):
    """Bad input from the user: one line that says what is wrong and where."""


class InvalidValueError(UserError, ValueError):
    """A value (flag, config key, file content) that cannot be used."""


class MissingFileError(UserError, FileNotFoundError):
    """A file or directory the user pointed at does not exist."""


def check_creatable(path, what: str) -> None:
    """Refuse, before any work, a path we will create (or write into) that cannot be: its nearest
    existing ancestor must be a directory we may write into. os.access also sees a read-only
    file system, which stops root, whom permission bits never do."""
    import os
    from pathlib import Path

    path = Path(path)
    ancestor = path
    while not ancestor.exists() and not ancestor.is_symlink() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise InvalidValueError(f"{what} {path} cannot be created: {ancestor} is not a directory")
    if not os.access(ancestor, os.W_OK):
        raise InvalidValueError(f"{what} {path} is not writable (no write access to {ancestor})")
