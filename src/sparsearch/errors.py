"""The one exception type users see: the CLI prints its message on one line and exits non-zero."""


class SparsearchError(Exception):
    """A problem with the user's input (config, data, paths) rather than a bug in sparsearch."""


class ConfigError(SparsearchError):
    """A config mistake: a key, a type, a value out of range, or settings that do not go together. Every check of a
    config raises this one type, wherever the check lives."""
