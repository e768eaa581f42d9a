"""Errors of the network testbed, named by cause."""

from coopml.errors import CoopmlError


class TestbedError(CoopmlError):
    """The testbed could not do what was asked (a command failed, a service did not come up)."""

    __test__ = False  # not a pytest test class, despite the name


class TestbedUnavailable(TestbedError):
    """This machine cannot host the testbed: not root, or a required tool is missing."""


class StateError(TestbedError):
    """A run's state file is missing, unreadable or names another run."""
