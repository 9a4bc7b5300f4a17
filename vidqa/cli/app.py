"""The ``vidqa`` Typer app: its commands, ``--version``, and ``main()``, which turns every expected failure
into one line on stderr (``error: ...``) and a non-zero exit, never a traceback (``VIDQA_DEBUG=1`` shows
the traceback of an unexpected failure).

Start-up time: ``vidqa --help`` imports this package, typer and rich only. Each command imports the
heavy modules (torch, transformers, the library) inside its function, when it runs; those are the only
imports inside functions in ``vidqa.cli``.
"""

from __future__ import annotations

import typer

from vidqa import __version__
from vidqa.cli import ask, bench, cache, chat, index, search, serve, synthetic, train
from vidqa.cli.writers import err
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


def main(argv: list[str] | None = None) -> int:
    """Console entry point: one line on stderr and a non-zero exit for every expected failure."""
    try:
        rc = app(args=argv, standalone_mode=False)  # click returns typer.Exit's code here
        if isinstance(rc, int):
            return rc
    except VidqaError as e:
        err.print(f"[bold red]error:[/bold red] {e}", soft_wrap=True)
        return e.exit_code
    except KeyboardInterrupt:
        err.print("interrupted")
        return 130
    except typer.Exit as e:
        return e.exit_code
    except Exception as e:  # click usage errors and the unexpected
        # usage errors (a missing argument, a bad option): typer may raise click's or its bundled copy's
        if hasattr(e, "show") and isinstance(getattr(e, "exit_code", None), int):
            e.show()
            return e.exit_code
        if type(e).__name__ == "Abort":
            err.print("aborted")
            return 130
        if debug():
            raise
        msg = str(e).splitlines()[0] if str(e) else ""
        err.print(f"[bold red]internal error:[/bold red] {type(e).__name__}: {msg} (VIDQA_DEBUG=1 shows the traceback)",
                  soft_wrap=True)
        return 1
    return 0
