"""Data files shipped with the package: the default model (see LICENSE-GaSNet-III)."""
