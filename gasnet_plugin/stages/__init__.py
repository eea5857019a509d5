"""Pipeline stages, one module each, registered through ``gasnet_register_stages``."""
