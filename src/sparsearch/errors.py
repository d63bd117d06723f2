"""The one exception type users see: the CLI prints its message on one line and exits non-zero."""


class SparsearchError(Exception):
    """A problem with the user's input (config, data, paths) rather than a bug in sparsearch."""
