"""Errors a user can cause and fix: a bad config value, a bad file, a busy run folder, a run
that diverged. Their message is one line naming the file, field or value (and what to change);
the CLI prints it and exits 2. Anything else is a bug and keeps its traceback."""


# Exit codes of the CLI: 0 done; 2 an error the user can fix (one line); EXIT_PREEMPTED a run
# that SIGTERM stopped after saving -- not done, run the same command again (sysexits.h
# EX_TEMPFAIL); anything else a crash.
EXIT_USER_ERROR = 2
EXIT_PREEMPTED = 75


class UserError(ValueError):
  """Base of every error a user can cause; the message is one line."""


class ConfigError(UserError):
  """A bad config key or value; the message is one line and names the field."""


class RunDirError(UserError):
  """A run folder that can't be used as asked: another live run holds it, or it holds a run
  with another setup."""


class NonFiniteError(UserError):
  """Training produced a non-finite loss or gradient (train.on_nonfinite)."""


class DiskFullError(UserError):
  """A run folder's disk cannot hold the next write (a checkpoint); nothing earlier is lost."""
