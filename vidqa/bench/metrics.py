"""Judge-free, reproducible answer metrics.

``normalize(text)``, in this order:

1. Unicode NFKC, then lowercase.
2. Apostrophes (``'`` U+2018 U+2019 U+02BC ````` U+00B4) are deleted: ``man's`` -> ``mans``.
3. Every other punctuation character (Unicode category ``P*``: ``. , ? ! : ; - _ " ( ) [ ] / ...``)
   becomes a space: ``t-shirt`` -> ``t shirt``. Symbols (``$ + =``) and digits stay.
4. Split on whitespace, drop the words ``a``, ``an``, ``the``, and join with single spaces.

``exact_match``: ``normalize(prediction) == normalize(gold)``. ``contains``: the normalised gold answer
occurs in the normalised prediction as a whole-word sequence (``" " + gold + " "`` is a substring of
``" " + prediction + " "``). A gold answer that normalises to the empty string matches nothing.
Accuracies (``vidqa.bench.report``) are over the answered questions; missing or unreadable videos are
counted, not scored.
"""

from __future__ import annotations

import unicodedata
from typing import Any

ARTICLES = frozenset({"a", "an", "the"})
APOSTROPHES = frozenset("'\u2018\u2019\u02bc`\u00b4")


def normalize(text: Any) -> str:
    """The answer normalisation rule (module docstring): NFKC + lowercase, apostrophes deleted, other
    punctuation to spaces, articles dropped, whitespace collapsed."""
    text = unicodedata.normalize("NFKC", "" if text is None else str(text)).lower()
    out = []
    for ch in text:
        if ch in APOSTROPHES:
            continue
        out.append(" " if unicodedata.category(ch).startswith("P") else ch)
    return " ".join(w for w in "".join(out).split() if w not in ARTICLES)


def exact_match(prediction: Any, gold: Any) -> bool:
    g = normalize(gold)
    return bool(g) and normalize(prediction) == g


def contains(prediction: Any, gold: Any) -> bool:
    g = normalize(gold)
    return bool(g) and f" {g} " in f" {normalize(prediction)} "


def score(prediction: Any, gold: Any) -> dict[str, bool]:
    return {"exact_match": exact_match(prediction, gold), "contains": contains(prediction, gold)}

