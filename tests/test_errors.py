"""`vidqa.errors`: every user-facing error is one line with an exit code."""

import pytest

from vidqa.errors import ContextError, ModelError, VideoError, VidqaError


def test_messages_are_forced_onto_one_line():
    e = VidqaError("cannot read\n  the file\tx.mp4")
    assert str(e) == "cannot read the file x.mp4"


@pytest.mark.parametrize("cls", [VideoError, ModelError, ContextError])
def test_subclasses_are_vidqa_errors_with_exit_code_1(cls):
    e = cls("bad")
    assert isinstance(e, VidqaError) and e.exit_code == 1


def test_exit_code_can_be_given():
    assert VidqaError("usage", exit_code=2).exit_code == 2
