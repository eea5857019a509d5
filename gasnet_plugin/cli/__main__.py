"""``python -m gasnet_plugin.cli``."""

from gasnet_plugin.cli import main

main()
