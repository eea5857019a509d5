"""Input readers (specutils loaders per survey format) and the ASDF results archive."""
