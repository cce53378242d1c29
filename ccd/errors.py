"""Project errors.

Every error a user can cause (bad input file, wrong block number, missing model) is a
`CcdError`: the CLI prints its message as one line on stderr and exits non-zero, never a
traceback. Anything else escaping is a bug and keeps its traceback.
"""


class CcdError(Exception):
    """An error caused by input or state that the user can fix; its message says how."""


class BadInputError(CcdError):
    """An input file or argument cannot be read or has the wrong shape."""


class ValidationFailedError(CcdError):
    """A block failed validation and was quarantined; nothing of it entered the lake."""


class BlockOrderError(CcdError):
    """A block arrived out of order, or would overwrite an existing block without --replace."""


class TrainingError(CcdError):
    """Training cannot go on: a NaN loss, an empty block, a model that does not match its data."""
