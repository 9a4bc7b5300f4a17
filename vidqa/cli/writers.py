"""Where a command's output goes: plain text into a pipe, a rich live view on a terminal, or JSON.

``get_writer(as_json)`` picks one (as whisper's ``get_writer`` picks by format). Every writer has

- ``answer(pieces) -> str``: show an answer as it is generated (or, for JSON, only collect it);
- ``result(obj, text=None)``: the command's result: JSON prints ``obj`` as one line on stdout, the
  text writers print ``text`` (a string or a rich renderable, e.g. a table) if given;
- ``summary(line)``: a dim line on stderr after the result (nothing in JSON mode);
- ``progress()``: a context manager giving a ``library.Progress`` (stage + advance). It draws a
  transient rich bar on stderr only when stderr is a terminal and the output is not JSON; else it
  draws nothing.

Notes and errors go to stderr in every mode (``note``, ``error_line``, ``err``).

Every string that comes from the user or from data (file names, questions, answers, error messages,
store paths, category names) reaches rich escaped (``escape``) or as a ``Text``: ``My video [dQw4w9WgXcQ].mp4``
is printed as it is, and ``a[/]b.mp4`` is not a markup error.
"""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from typing import Any, Iterable, Iterator

from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.text import Text

err = Console(stderr=True, highlight=False)


def note(message: str) -> None:
    """A one-line note on stderr (every mode: JSON readers read stdout only)."""
    err.print(f"note: {' '.join(str(message).split())}", soft_wrap=True, markup=False)


def error_line(message: object, label: str = "error") -> None:
    """``error: <message>`` on stderr, one line; the message is printed as it is (no markup)."""
    err.print(Text.assemble((f"{label}:", "bold red"), " ", " ".join(str(message).split())), soft_wrap=True)


class _Bar:
    """A ``library.Progress`` drawn as one transient rich line per stage: a spinner for a stage of
    unknown size, a bar with done/total for the others."""

    def __init__(self, progress: Progress):
        self._progress = progress
        self._task = None

    def stage(self, name: str, total: int | None = None) -> None:
        if self._task is not None:  # a new task: rich cannot turn a sized task back into a spinner
            self._progress.remove_task(self._task)
        self._task = self._progress.add_task(escape(name), total=total)  # TextColumn renders markup

    def advance(self, n: int = 1) -> None:
        if self._task is not None:
            self._progress.advance(self._task, n)


class _Quiet:
    def stage(self, name: str, total: int | None = None) -> None:
        pass

    def advance(self, n: int = 1) -> None:
        pass


def live_progress() -> bool:
    """Whether progress is drawn: only for a person watching stderr."""
    return err.is_terminal


@contextmanager
def progress_bar(enabled: bool = True) -> Iterator[_Bar | _Quiet]:
    """A transient stage/progress display on stderr; a silent stand-in when disabled or not a terminal."""
    if not (enabled and live_progress()):
        yield _Quiet()
        return
    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=err, transient=True) as p:
        yield _Bar(p)


class TextWriter:
    """Plain text for a pipe or a file: streamed answers without terminal control codes."""

    json = False

    def __init__(self, stream=None):
        self.stream = stream or sys.stdout

    def answer(self, pieces: Iterable[str]) -> str:
        out: list[str] = []
        for piece in pieces:
            out.append(piece)
            self.stream.write(piece)
            self.stream.flush()
        self.stream.write("\n")
        self.stream.flush()  # before the summary line on stderr
        return "".join(out).strip()

    def result(self, obj: Any, text: Any = None) -> None:
        if text is not None:
            Console(file=self.stream, highlight=False).print(Text(text) if isinstance(text, str) else text,
                                                             soft_wrap=isinstance(text, str))

    def summary(self, line: str) -> None:
        err.print(Text(line, style="dim"), soft_wrap=True)

    def progress(self):
        return progress_bar(enabled=True)


class LiveWriter(TextWriter):
    """A terminal: the answer is redrawn live as it grows."""

    def answer(self, pieces: Iterable[str]) -> str:
        out: list[str] = []
        with Live(Text(""), console=Console(file=self.stream), refresh_per_second=20, transient=False) as live:
            for piece in pieces:
                out.append(piece)
                live.update(Text("".join(out)))
        return "".join(out).strip()


class JsonWriter:
    """One JSON object per result, one line each, on stdout; nothing else on stdout, no progress."""

    json = True

    def __init__(self, stream=None):
        self.stream = stream or sys.stdout

    def answer(self, pieces: Iterable[str]) -> str:
        return "".join(pieces).strip()

    def result(self, obj: Any, text: Any = None) -> None:
        self.stream.write(json.dumps(obj, default=str) + "\n")
        self.stream.flush()

    def summary(self, line: str) -> None:
        pass

    def progress(self):
        return progress_bar(enabled=False)


def get_writer(as_json: bool = False, stream=None) -> TextWriter | JsonWriter:
    """JSON when asked for; else a live view on a terminal and plain text into a pipe."""
    stream = stream or sys.stdout
    if as_json:
        return JsonWriter(stream)
    return LiveWriter(stream) if stream.isatty() else TextWriter(stream)
