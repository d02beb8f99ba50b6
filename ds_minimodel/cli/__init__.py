"""The command line: one module per step or tool, each runnable as `python -m ds_minimodel.cli.<step>`
(launchers/<step>.py and the `ds-minimodel <step>` console script are thin entries over them).

The helpers every command shares live in cli/common.py and are re-exported here, so
`from ds_minimodel.cli import training_main` keeps working.
"""

from ds_minimodel.cli.common import (
    ENVIRONMENT_ERRNOS,
    environment_error_line,
    run_main,
    training_main,
    training_parser,
)

__all__ = ["ENVIRONMENT_ERRNOS", "environment_error_line", "run_main", "training_main", "training_parser"]
