"""The ``gasnet`` command line, one module per command group.

Exit codes: 0 success; 1 the run finished but some inputs could not be measured (their
rows are flagged; see ``ZWARN_REASON``); 2 a usage or configuration error (nothing was
run).
"""

from gasnet_plugin.cli import (  # noqa: F401  (each module registers its commands)
    archive_commands,
    model_commands,
    run_command,
    train_commands,
)
from gasnet_plugin.cli.common import EXIT_SOME_FAILED, EXIT_USAGE
from gasnet_plugin.cli.group import main

__all__ = ["EXIT_SOME_FAILED", "EXIT_USAGE", "main"]
