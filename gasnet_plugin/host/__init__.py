"""The reference host: plugin manager, registries, configuration and the pipeline runner."""
