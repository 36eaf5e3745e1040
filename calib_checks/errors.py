"""The one error type users see.

Every bad input (a typo in thresholds.toml, an unknown task, a model that fails to load, a NaN) raises a
subclass of `CalibChecksError` whose message names what is wrong and what to do. The CLI and the pytest
plugin print that message on one line instead of a traceback.
"""


class CalibChecksError(Exception):
    """Base class of user-facing errors: the message alone must be enough to act on."""
