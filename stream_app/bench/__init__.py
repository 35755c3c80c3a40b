"""``importance bench``: speed, memory and quality benchmarks of the service.

The subcommands import their heavy dependencies (matplotlib, psutil, the worker) only when
they run; the plotting and sampling packages come with the ``bench`` extra
(``pip install -e '.[bench]'``).
"""

from __future__ import annotations

import importlib
import importlib.util
import re
from pathlib import Path

import click

__all__ = ["DOC_SECTIONS", "bench_cli", "docs_dir", "update_doc_section"]

#: The sections of docs/benchmarks.md, each owned by one benchmark.
DOC_SECTIONS = ("speed", "memory", "quality")
_DOC_TITLE = (
    "# Benchmarks\n\nNumbers measured on this project's machine; each section is rewritten "
    "by its\n`importance bench <name>` command.\n"
)


def docs_dir() -> Path:
    """``docs/`` of the source checkout (or of the current directory when installed)."""
    from stream_app.config import repo_root

    root = repo_root()
    return (root if root is not None else Path.cwd()) / "docs"


def update_doc_section(name: str, body: str, path: Path | None = None) -> Path:
    """Replace what lies between ``<!-- name:start -->`` and ``<!-- name:end -->`` in
    docs/benchmarks.md with ``body``; creates the file with all sections when absent and
    appends the markers when only this section is missing. Other sections are untouched."""
    path = path or docs_dir() / "benchmarks.md"
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    if path.exists():
        text = path.read_text(encoding="utf-8")
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        text = _DOC_TITLE + "".join(
            f"\n<!-- {s}:start -->\n<!-- {s}:end -->\n" for s in DOC_SECTIONS
        )
    if start not in text or end not in text:
        text = text.rstrip("\n") + f"\n\n{start}\n{end}\n"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    replacement = f"{start}\n{body.strip()}\n{end}"
    text = pattern.sub(lambda _m: replacement, text, count=1)
    path.write_text(text, encoding="utf-8")
    return path


def _module_exists(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ImportError:
        return False


class _LazyGroup(click.Group):
    """Imports a subcommand's module only when that subcommand is listed or run, so a
    missing optional module (``quality``) or dependency never breaks the others."""

    _commands = {
        "speed": ("stream_app.bench.speed", "speed_cmd"),
        "memory": ("stream_app.bench.memory", "memory_cmd"),
        "quality": ("stream_app.bench.quality", "quality_cmd"),
        "restart": ("stream_app.bench.restart", "restart_cmd"),
    }

    def list_commands(self, ctx: click.Context) -> list[str]:
        return [name for name, (module, _) in self._commands.items() if _module_exists(module)]

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        target = self._commands.get(name)
        if target is None:
            return super().get_command(ctx, name)
        module_name, attr = target
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if name == "quality" and exc.name == module_name:
                return None  # not written (yet): the group works without it
            raise
        return getattr(module, attr)


@click.group(name="bench", cls=_LazyGroup)
def bench_cli() -> None:
    """Benchmarks: throughput/latency (speed), bounded state (memory), model quality."""
