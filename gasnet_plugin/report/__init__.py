"""Plots and the static HTML report (``gasnet report``); needs the ``plot`` extra."""
