"""The errors the tensor route raises for bad input: ours, and SB3's class too.

The route checks its input before any work and says what is wrong in its own words, where SB3's
NumPy path fails later, deeper, with whatever its code hits first (a ``KeyError`` for a wrong Dict key,
an ``AssertionError`` for a dict given to a Box policy, a ``RuntimeError`` from a reshape). Each error
class here derives from both, so that an ``except`` clause written against SB3's behaviour still
catches it, and one written against ours does too.
"""

from __future__ import annotations


class DictKeyError(ValueError, KeyError):
    """A Dict observation with missing or unexpected keys (SB3 raises ``KeyError``)."""

    # KeyError's own __str__ quotes its message as it would a key
    __str__ = ValueError.__str__


class ObservationTypeError(TypeError, AssertionError):
    """A dict given to a policy whose observation space is not a Dict, or a tensor given to a
    ``VecNormalize`` of a Dict space (SB3 fails an ``assert`` in both)."""


class DictExpectedError(TypeError, IndexError):
    """A tensor given to a policy whose observation space is a Dict (SB3 fails indexing it by key)."""


class SizeMismatchError(ValueError, RuntimeError):
    """Sizes that do not fit together: Dict keys with different batch sizes, ``action_masks``, LSTM states
    or ``episode_start`` of the wrong size (SB3's ``torch.cat`` or ``reshape`` raises ``RuntimeError``)."""


class StatePairError(ValueError, IndexError):
    """An LSTM state that is not a ``(hidden, cell)`` pair (SB3 fails indexing ``state[1]``)."""


class ForeignArrayError(TypeError, ValueError):
    """An array of another library (JAX, CuPy, Warp, ...) that cannot go through DLPack: torch cannot
    import it (its dtype, strides or device), or its library cannot take the results back. SB3's NumPy
    path fails on such arrays with a ``TypeError`` or ``ValueError``, depending on what it hits first."""
