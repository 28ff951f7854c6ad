"""The root of citymesh's exceptions.

Every component raises subclasses of ``CitymeshError``; where a built-in exception
fits, the subclass inherits it too, so callers may catch either::

    CitymeshError
    ├── InvalidInput (ValueError)         bad user input: a file, a value, a spec
    ├── NotFound (LookupError)            a dataset, node, job or event is unknown
    ├── PolicyViolation (PermissionError) a request breaks a dataset's policy
    ├── AuthError (PermissionError)       a signature, nonce or key is rejected
    └── ChainError                        the ledger chain rejected or failed a call

Components may define narrower subclasses of these.
"""


class CitymeshError(Exception):
    """Base class of every error citymesh raises on purpose."""


class InvalidInput(CitymeshError, ValueError):
    """A user-supplied value, file or spec is invalid."""


class NotFound(CitymeshError, LookupError):
    """A named dataset, node, job or event does not exist."""


class PolicyViolation(CitymeshError, PermissionError):
    """A request breaks a dataset's policy or the grade rules."""


class AuthError(CitymeshError, PermissionError):
    """A request's signature, nonce, timestamp or signer is rejected."""


class ChainError(CitymeshError):
    """The ledger chain rejected a transaction or could not be reached."""
