"""The errors of pipeline.data: one DataError family, so a caller can catch bad data with one except clause."""

class DataError(ValueError):
  """Bad data or data configuration; the message names the file (or dataset and split) and the row."""


class DataFileNotFoundError(DataError, FileNotFoundError):
  """A data file that does not exist (also a FileNotFoundError, so either except clause catches it)."""


class MissingColumnError(DataError):
  """A text or label column the config names is absent; the message lists the columns present."""


class UnknownLabelError(DataError):
  """An eval label the train split does not have."""


class EmptySplitError(DataError):
  """A split with no rows."""


class BadTextError(DataError):
  """A text cell that is not a string (None, a number, NaN, ...), or is empty (unless data.allow_empty_text)."""


class SingleClassError(DataError):
  """A training split with fewer than two classes: nothing for a classifier to learn."""


class BadLabelError(DataError):
  """A label cell that is not a class (None, NaN, a fraction, ...)."""


class UnknownSourceError(DataError):
  """`config.source` is not one of SOURCES."""


class BadConfigError(DataError):
  """A data config field with an impossible value (text_fields, sizes, batch sizes)."""


class DownloadError(DataError):
  """Fetching a corpus from the package registry failed; the message gives the command to run by hand."""
