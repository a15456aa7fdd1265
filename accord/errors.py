"""Bad input from the user, told apart from bugs.

`UserError` is a problem with what the user gave: a path that is not a run directory, a file
that is not a checkpoint, an option out of range, a device the cluster does not have. Its
message names the thing and says what would work; the CLI prints it as one `error:` line and
exits 2 with nothing started and nothing lost. `accord.config.ConfigError` is the kind for
config fields (printed as `config error:`). Anything else that escapes is a bug and keeps
its traceback.
"""
from __future__ import annotations


class UserError(ValueError):
    """Input that cannot be used; the message names it (one line)."""
