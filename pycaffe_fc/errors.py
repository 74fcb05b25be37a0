"""The one user-facing exception type of fc-caffe."""


class CaffeError(Exception):
    """A user-facing error: one line naming the file, layer, blob or key."""
