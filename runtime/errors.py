"""The package's own errors: every failure a user can cause is one of these, with a one-line message that says the fix."""


class ReplyrankError(Exception):
    """Base class of every error replyrank raises on purpose."""


class BundleError(ReplyrankError):
    """A bundle folder is missing, incomplete, changed or of a format this version cannot read."""


class InputError(ReplyrankError, ValueError):
    """A comment, reply or option that replyrank cannot work with."""


class DeadlineExceeded(ReplyrankError, TimeoutError):
    """A call ran past the deadline its caller set (`replyrank.generate.deadline`); the decode was stopped."""


class RankingOnly(ReplyrankError, NotImplementedError):
    """A reply was asked of a bot that only ranks: its bundle holds no generator, or it was loaded without one
    (`replyrank.load_ranker`); the server answers it with 501."""
