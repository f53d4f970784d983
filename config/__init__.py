"""Dataset presets with the official CPCL defaults (installed as ``cpcl.presets``)."""
