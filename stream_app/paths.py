"""Where a source checkout is: the one place that decides where its ``.cache``,
``.kafka`` and ``../shared/data`` are (no dependencies, so the command line and the
local broker import it cheaply)."""

from __future__ import annotations

from pathlib import Path

__all__ = ["repo_root"]


def repo_root() -> Path | None:
    """The source checkout this package runs from (the folder of ``pyproject.toml``), or
    None when it is installed elsewhere."""
    root = Path(__file__).resolve().parent.parent
    return root if (root / "pyproject.toml").is_file() else None
