"""Models: the eigenspectra model file (GaSNet-III) and its torch modules."""
