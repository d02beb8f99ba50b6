"""The configs that ship with the package: `configs/*.yaml` and `ds_configs/*.json` (and the
study specs, `studies/*.yaml`) by name, from an installed package as from the checkout.

`find("configs/adapt-demo.yaml")` is the file as given when it exists (an absolute path, or one
relative to the working directory: a user's own copy wins), else the package's copy. An installed
package carries the two directories as package data (setup.py maps them to
ds_minimodel/configs and ds_minimodel/ds_configs); an editable install or a plain checkout finds
them beside the package, at the repository's top. So the pipeline and the study can name
`configs/adapt-demo.yaml` in every command they build, and the step finds it from any directory.
"""

from __future__ import annotations

from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
# Where the shipped copies may sit: inside an installed package, then beside it (the checkout).
HOMES = (PACKAGE, PACKAGE.parent)
SHIPPED_DIRS = ("configs", "ds_configs", "studies")  # setup.py ships these that exist


def find(name: str | Path | None) -> Path | None:
    """The file `name` names: the path itself when it exists, else the package's copy of a
    `configs/...`, `ds_configs/...` or `studies/...` name; else `name` unchanged, for the loader's own error."""
    if name is None:
        return None
    path = Path(name)
    if path.exists() or path.is_absolute() or not path.parts or path.parts[0] not in SHIPPED_DIRS:
        return path
    for home in HOMES:
        if (home / path).is_file():
            return home / path
    return path
