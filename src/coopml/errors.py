"""Project-wide error base: every error a user can cause derives from CoopmlError so the CLI
can print its message instead of a traceback."""


class CoopmlError(Exception):
    """Base for errors with a message meant for a person."""


class DataError(CoopmlError):
    """A dataset file is missing, corrupted or malformed."""


class ModelFileError(CoopmlError):
    """A model file or manifest is malformed, tampered, or does not match its architecture."""


class HEError(CoopmlError):
    """Homomorphic-encryption misuse: bad parameters, mismatched keys, noise budget exceeded, bad blobs."""
