"""The one error of lsgm.data."""


class DataError(ValueError):
    """A dataset name, option, path or file a user gave is missing or malformed; the message names the
    expected layout or the accepted values."""
