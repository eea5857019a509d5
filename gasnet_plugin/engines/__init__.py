"""Redshift engines for the redshift-scan stage, registered through ``gasnet_register_engines``."""
