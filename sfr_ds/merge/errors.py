"""``MergeError``, in a module of its own so that every part of the merge (and the adapter soup built
from them) raises the same error without importing the ``merge`` entry point."""


class MergeError(RuntimeError):
    """A merge that cannot be done or does not verify; the message names the fix."""
