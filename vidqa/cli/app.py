"""The ``vidqa`` Typer app: its commands, ``--version``, and ``main()``, which turns every expected failure
into one line on stderr (``error: ...``) and a non-zero exit, never a traceback (``VIDQA_DEBUG=1`` shows
the traceback of an unexpected failure). A usage error (a bad or missing option) is one line too, exit 2;
Ctrl-C is one line, ``interrupted``, exit 130, wherever it lands.

stderr carries vidqa's own lines only: each of vidqa's warnings (``VideoWarning``, ``CacheWarning``, any
warning class defined in ``vidqa``) becomes one ``note:`` line, without the source line Python would add;
third-party warnings and log records (transformers, torch, torchao ...) are hidden, and
``VIDQA_DEBUG=1`` shows them.

Start-up time: ``vidqa --help`` imports this package, typer and rich only. Each command imports the
heavy modules (torch, transformers, the library) inside its function, when it runs; those are the only
imports inside functions in ``vidqa.cli``.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import warnings
from contextlib import contextmanager
from typing import Iterator

import typer

from vidqa import __version__
from vidqa.cli import ask, bench, cache, chat, index, search, serve, synthetic, train
from vidqa.cli.writers import error_line, note
from vidqa.errors import VidqaError
from vidqa.options import debug

HELP_OPTIONS = {"help_option_names": ["-h", "--help"]}

app = typer.Typer(
    name="vidqa",
    help="Answer questions about videos with compressed per-frame caches (VoCo-LLaMA, LLaVA-Mini).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    context_settings=HELP_OPTIONS,
)


def _version(value: bool):
    if value:
        print(f"vidqa {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                              help="Print the version and exit.")):
    """Answer questions about videos. Each frame is compressed to a few tokens on the GPU, once;
    questions then run against the tiny per-frame caches.

    [bold]Examples[/bold]

      vidqa ask movie.mp4 "what happens after the door opens?" --model DIR
      vidqa ask clip.mp4 "how many people?" --fps 2 --max-frames 64 --json
    """


app.command()(ask.ask)
app.command()(chat.chat)
app.command(help=index.HELP)(index.index)
app.add_typer(cache.app, name="cache")
app.command(help=bench.HELP)(bench.bench)
app.command()(train.train)
app.command()(synthetic.synthetic)
app.command(help=serve.HELP)(serve.serve)
app.command(help=search.HELP)(search.search)


def _is_ours(category: type) -> bool:
    return type(category).__module__ == "builtins" and category.__module__.split(".")[0] == "vidqa"


@contextmanager
def quiet_stderr() -> Iterator[None]:
    """For the length of a command: vidqa's warnings as ``note:`` lines, everything else's warnings and
    log records (level WARNING and below) hidden, unless ``VIDQA_DEBUG=1``. Restores the previous state."""
    shown = debug()
    logging_was = logging.root.manager.disable
    with warnings.catch_warnings():
        def show(message, category, filename, lineno, file=None, line=None):
            if _is_ours(category):
                note(str(message))
            elif shown:  # to stderr itself: a host (pytest, a notebook) may have replaced showwarning
                sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))

        warnings.simplefilter("default")  # each distinct warning once
        warnings.showwarning = show
        if not shown:
            logging.disable(logging.WARNING)
        try:
            yield
        finally:
            logging.disable(logging_was)


@contextmanager
def ctrl_c(seen: list) -> Iterator[None]:
    """SIGINT raises KeyboardInterrupt once and is noted in ``seen`` (typer turns the interrupt into a
    silent exit 130, so ``main`` must know it happened); a second Ctrl-C ends the process at once, in
    case the first left it waiting (a decode thread, a stuck request). Only in the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_sigint(signum, frame):
        if seen:
            os.write(2, b"interrupted\n")
            os._exit(130)
        seen.append(True)
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _interrupted() -> None:
    # not through rich: the interrupt may have landed inside a rich print, whose half-flushed buffer
    # the next rich print would repeat
    sys.stderr.write("interrupted\n")
    sys.stderr.flush()


def _usage_line(e: Exception) -> str:
    """A click usage error (a missing argument, a bad option value) as one line, with where help is."""
    ctx = getattr(e, "ctx", None)
    where = f" (see: {ctx.command_path} --help)" if ctx is not None else ""
    return f"{e.format_message()}{where}"


def main(argv: list[str] | None = None) -> int:
    """Console entry point: one line on stderr and a non-zero exit for every expected failure."""
    interrupted: list = []
    try:
        with ctrl_c(interrupted), quiet_stderr():
            rc = app(args=argv, standalone_mode=False)  # click returns typer.Exit's code here
        if interrupted:
            raise KeyboardInterrupt
        if isinstance(rc, int):
            return rc
    except VidqaError as e:
        error_line(e)
        return e.exit_code
    except KeyboardInterrupt:
        _interrupted()
        return 130
    except typer.Exit as e:
        return e.exit_code
    except Exception as e:  # click usage errors and the unexpected
        # usage errors (a missing argument, a bad option): typer may raise click's or its bundled copy's
        if hasattr(e, "format_message") and isinstance(getattr(e, "exit_code", None), int):
            error_line(_usage_line(e))
            return e.exit_code
        if type(e).__name__ == "Abort":  # click's own Ctrl-C (at a prompt)
            _interrupted()
            return 130
        if debug():
            raise
        msg = str(e).splitlines()[0] if str(e) else ""
        error_line(f"{type(e).__name__}: {msg} (VIDQA_DEBUG=1 shows the traceback)", label="internal error")
        return 1
    return 0
