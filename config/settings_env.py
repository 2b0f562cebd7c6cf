"""The one helper the settings modules share: a field's alias is its environment variable."""

from __future__ import annotations

from pydantic import AliasChoices


def env(name: str) -> AliasChoices:
    """The validation alias of a settings field: the environment variable's name."""
    return AliasChoices(name)
