"""Typed errors of the partitioner: which constraint made a request infeasible."""

from __future__ import annotations

import enum

from dmt import DmtError


class PartitionErrorReason(str, enum.Enum):
    """The constraint a partition request violates."""

    TOO_FEW_FEATURES = "too_few_features"  # fewer features than towers, and empty towers not allowed
    BALANCE = "balance"  # no assignment found with max tower cost <= (1 + tolerance) * mean
    MEMORY = "memory"  # a tower (hence its host) cannot hold its embedding tables
    INPUT = "input"  # representation and costs disagree (names, lengths, negative values)


class PartitionError(DmtError):
    """A partition request that cannot be satisfied; ``reason`` names the violated constraint.

    Args:
        message: what is wrong, with the numbers, and how to fix it.
        reason: the violated constraint.

    Example:
        >>> e = PartitionError("3 features cannot fill 4 towers", PartitionErrorReason.TOO_FEW_FEATURES)
        >>> e.reason.value, str(e)
        ('too_few_features', '3 features cannot fill 4 towers')
    """

    def __init__(self, message: str, reason: PartitionErrorReason) -> None:
        super().__init__(message)
        self.reason = reason
