"""Pipeline stages, one module each, registered through ``gasnet_register_stages``."""

PIPELINE_ORDER = ("resample", "classify", "redshift-scan", "reconstruct", "subtype",
                  "flag-anomaly")
"""The built-in stages in the order a pipeline runs them (how they are listed)."""
