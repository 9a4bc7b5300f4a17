"""`vidqa cache ls|rm|verify`: show, prune and check the cache store."""

from __future__ import annotations

import dataclasses
from datetime import timedelta
from typing import Annotated, Optional

import typer

from vidqa.cli import params as P
from vidqa.cli.writers import err, get_writer
from vidqa.errors import VidqaError

app = typer.Typer(help="Show, prune and check the cache store (see `vidqa index`).", no_args_is_help=True)


def _store(cache_dir: str | None):
    from vidqa.store import Store  # imported when the command runs, not for `vidqa --help`

    return Store(P.cache_options(cache_dir).root)


@app.command("ls")
def ls(cache_dir: P.CacheDir = None, as_json: P.json_flag("One JSON list instead of a table.") = False):
    """List stored entries: video, frames, size, method, model."""
    from rich.table import Table
    from rich.text import Text

    store = _store(cache_dir)
    entries = store.entries()
    table = None
    if not as_json:
        table = Table(title=Text(f"{len(entries)} entries in {store.root}"))
        for col in ("key", "video", "frames", "MB", "method", "model", "created"):
            table.add_column(col)
        for e in entries:  # Text, not str: a cell would be read as markup (file names like "My video [id].mp4")
            table.add_row(*(Text(str(v)) for v in (e.key[:12], e.source, e.frames, f"{e.bytes / 1e6:.1f}", e.method,
                                                   str(e.model)[:12], str(e.created)[:19])))
    get_writer(as_json).result([dataclasses.asdict(e) for e in entries], table)


@app.command("rm")
def rm(key: Annotated[Optional[str], typer.Argument(help="An entry's key (a unique prefix is enough).",
                                                    show_default=False)] = None,
       source: Annotated[Optional[str], typer.Option(
           help="Remove the entries of this video, or of every video under this folder.", show_default=False)] = None,
       older_than: Annotated[Optional[float], typer.Option(help="Remove entries older than this many days.",
                                                           show_default=False)] = None,
       all_entries: Annotated[bool, typer.Option("--all", help="Remove everything.")] = False,
       cache_dir: P.CacheDir = None):
    """Remove entries by key, by video, by age, or all of them."""
    if not (key or source or older_than is not None or all_entries):
        raise VidqaError("say what to remove: a KEY, --source PATH, --older-than DAYS or --all", exit_code=2)
    n = _store(cache_dir).remove(key, source=source, all=all_entries,
                                 older_than=timedelta(days=older_than) if older_than is not None else None)
    err.print(f"removed {n} entr{'y' if n == 1 else 'ies'}")


@app.command("verify")
def verify(cache_dir: P.CacheDir = None,
           repair: Annotated[bool, typer.Option(help="Remove what is broken (--no-repair only lists it).")] = True):
    """Check every entry's checksum and files; exit 1 if anything was wrong."""
    problems = _store(cache_dir).verify(repair=repair)
    for key, problem in problems:
        err.print(f"{key[:12]}: {problem}", soft_wrap=True, markup=False)
    err.print(f"{len(problems)} problem{'s' if len(problems) != 1 else ''}{' (repaired)' if problems and repair else ''}")
    if problems:
        raise typer.Exit(1)
