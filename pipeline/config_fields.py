"""Config fields that an older or hand-made config may lack: one reader for every module."""

from __future__ import annotations

from typing import Any


def get(section: Any, key: str, default: Any = None) -> Any:
  """section[key] (a ConfigDict or dict; any other object by attribute), or default when the section is None
  or the field is absent or None."""
  if section is None:
    return default
  try:
    value = section[key]
  except (KeyError, AttributeError):
    return default
  except TypeError:  # not subscriptable: a plain object with attributes
    value = getattr(section, key, default)
  return default if value is None else value
