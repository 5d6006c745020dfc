"""The exceptions the library raises: one vocabulary for every kind of misuse."""

from __future__ import annotations


class PlannerError(Exception):
    """Base class: every error the library raises on bad input derives from it."""


class ArchitectureError(PlannerError, ValueError):
    """An architecture string or layer list is malformed."""


class DensityError(PlannerError, ValueError):
    """A density is outside (0, 1] or the number of densities does not match the layers."""


class RankModelError(PlannerError, ValueError):
    """An unknown rank model, or a rank model that refuses the requested shape."""


class InputDimError(PlannerError, ValueError):
    """The input-subspace dimension is out of range."""


class PlanFormatError(PlannerError, ValueError):
    """A plan file is malformed, or written by a newer format version."""


class SolverError(PlannerError):
    """A solver backend failed, is unknown, or refuses the instance."""


class SolverUnavailableError(SolverError):
    """A solver backend's library is not installed."""


class ProblemError(PlannerError, ValueError):
    """An allocation problem is malformed (budgets, bounds, frozen layers)."""


class InfeasibleError(PlannerError):
    """No allocation meets the budgets and per-layer limits."""


class ModelError(PlannerError):
    """A model factory cannot be loaded, or its layers do not suit the planner."""


class CheckpointError(PlannerError):
    """A checkpoint is missing, unsafe to unpickle, or does not fit the model."""


class PlanMismatchError(PlannerError):
    """A plan does not fit the model it is applied to."""


class OutputError(PlannerError):
    """An output path cannot be written (missing directory, read-only, not a file, disk full)."""


class LimitError(PlannerError, ValueError):
    """A size or value is beyond what the planner supports (the message names the limit)."""


class PatternError(PlannerError, ValueError):
    """A structured-sparsity pattern (BCR block, N:M) is malformed or a mask does not follow it."""


class LatencyTableError(PlannerError, ValueError):
    """A latency table is malformed, unreadable, or lacks a pattern a plan asks for."""
