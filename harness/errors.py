"""The harness's error hierarchy.

Two kinds of failure must never be confused:

- `InputError` (and its subclasses): bad input -- a config key, a spec, a path, a dataset tree, a
  CLI flag. Raised BEFORE anything trains; the CLI prints the message (naming the file, key or
  value and what was expected) and exits with code 2.
- `TrialFailure`: something went wrong INSIDE one trial (a non-finite loss, NaN test features, a
  protocol with no valid query, an out-of-memory). The runner records the trial as failed and the
  sweep goes on.

`HarnessError` is their common base, so `except HarnessError` still catches both.
"""

from __future__ import annotations

import numbers


class HarnessError(ValueError):
    """Base of every error the harness raises on purpose."""


class InputError(HarnessError):
    """Bad input, found before training: the CLI prints it and exits with code 2."""


class ConfigError(InputError):
    """A config, spec or override value that is unknown, of the wrong type or out of range."""


class EnvironmentFault(InputError):
    """The environment refuses what was asked (unwritable folder, full disk, corrupt store)."""


class TrialFailure(HarnessError):
    """A failure inside one trial: recorded as a failed trial, the sweep goes on."""


def check_int(value: object, where: str, *, minimum: int | None = None, maximum: int | None = None) -> int:
    """Return `value` as an int, or raise ConfigError naming `where` and the accepted range.

    numpy integers are accepted (and returned as int); bools are not integers here.
    """
    if minimum is None and maximum is None:
        expected = "an integer"
    elif maximum is None:
        expected = f"an integer >= {minimum}"
    elif minimum is None:
        expected = f"an integer <= {maximum}"
    else:
        expected = f"an integer in [{minimum}, {maximum}]"
    if (isinstance(value, bool) or not isinstance(value, numbers.Integral)
            or (minimum is not None and value < minimum) or (maximum is not None and value > maximum)):
        raise ConfigError(f"{where}: expected {expected}, got {value!r}")
    return int(value)
