"""`vidqa.bench.metrics`: the exact normalisation and matching rule."""

import pytest

from vidqa import bench as B


# ------------------------------------------------------------------------------------------------
# metrics: the exact rule


@pytest.mark.parametrize("text,expected", [
    ("A Guitar.", "guitar"),
    ("  The   man's  hat! ", "mans hat"),
    ("t-shirt", "t shirt"),
    ("An apple, the pear and a plum?", "apple pear and plum"),
    ("“Quoted” (text) [here]", "quoted text here"),
    ("don’t", "dont"),
    ("3.5 $", "3 5 $"),
    ("ＦＵＬＬ width", "full width"),  # NFKC
    ("the", ""),
    ("theater anatomy", "theater anatomy"),  # articles only as whole words
    (None, ""),
])
def test_normalize(text, expected):
    assert B.normalize(text) == expected


@pytest.mark.parametrize("pred,gold,em,cont", [
    ("A guitar.", "guitar", True, True),
    ("guitar", "Guitar", True, True),
    ("the man on the left", "man", False, True),
    ("woman", "man", False, False),  # word boundary: no substring match inside a word
    ("mans", "man", False, False),
    ("in the park", "park", False, True),
    ("a red car", "red car", True, True),  # the article goes
    ("big red car", "red car", False, True),
    ("red and blue car", "red car", False, False),
    ("two", "2", False, False),  # no number words: the rule is literal
    ("", "guitar", False, False),
    ("the", "the", False, False),  # a gold that normalises to nothing matches nothing
])
def test_exact_match_and_contains(pred, gold, em, cont):
    assert B.exact_match(pred, gold) is em
    assert B.contains(pred, gold) is cont
    assert B.score(pred, gold) == {"exact_match": em, "contains": cont}
