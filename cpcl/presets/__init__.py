"""Dataset presets with the official CPCL defaults (``cpcl.presets``)."""
