"""cpcl: a faithful, modern reimplementation of CPCL (Fan et al., IEEE TIP 2023)."""

__version__ = "0.1.0"
