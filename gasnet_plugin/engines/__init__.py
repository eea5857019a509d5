"""Redshift engines: swappable parts of the redshift-scan stage (see ``protocol``)."""
