"""Exceptions for user errors. Entry points print their message and exit non-zero, no traceback."""


class CpclError(Exception):
    """Base class for errors caused by user input (files, configs, checkpoints)."""


class ConfigError(CpclError, ValueError):
    """A bad configuration key or value; the message names the key and what was expected."""


class DataError(CpclError):
    """A dataset root, list file, image or label that cannot be used; the message names it."""


class CheckpointError(CpclError):
    """A checkpoint that cannot be read or does not fit the model; the message names the file."""


class OutputError(CpclError):
    """An output folder or file that cannot be written (read-only, no permission, disk full)."""
