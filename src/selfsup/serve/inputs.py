"""What counts as a text a classifier may answer: one rule for `selfsup predict`, `selfsup score` and the service.

A model answers anything, with high confidence, even an empty string; so text that is empty, only whitespace or
only invisible characters (zero-width spaces, joiners, BOMs, control characters, Hangul fillers, the braille
blank) is refused before it reaches a model, as is text longer than the configured limit.
"""

from __future__ import annotations

import unicodedata

# categories that never render a glyph: controls, format characters (zero-width space/joiner, BOM, bidi marks),
# surrogates, private use, unassigned, and every kind of space/separator
_INVISIBLE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zs", "Zl", "Zp"})
# letters and symbols that render as blank space although their category says otherwise
_BLANK_GLYPHS = frozenset("\u115f\u1160\u3164\uffa0\u2800")


class TextRejected(ValueError):
    """A text no model should answer; the message says which rule it broke."""


def has_visible_character(text: str) -> bool:
    return any(ch not in _BLANK_GLYPHS and unicodedata.category(ch) not in _INVISIBLE_CATEGORIES for ch in text)


def check_text(text: object, max_chars: int | None = None, where: str = "text") -> str:
    """Return ``text`` unchanged if a model may answer it, else raise ``TextRejected`` naming ``where`` and the rule."""
    if not isinstance(text, str):
        raise TextRejected(f"{where} must be a string, got {type(text).__name__}")
    try:  # first: a text of lone surrogates would otherwise be called "only invisible characters" (category Cs)
        text.encode("utf-8")
    except UnicodeEncodeError as err:  # a JSON "\ud800" escape decodes to a lone surrogate: not valid Unicode
        raise TextRejected(f"{where} is not valid Unicode: a lone surrogate (\\u{ord(text[err.start]):04x}) at "
                           f"character {err.start + 1:,}") from None
    if not text.strip():
        raise TextRejected(f"{where} is empty or only whitespace")
    if not has_visible_character(text):
        raise TextRejected(f"{where} has only invisible characters (e.g. zero-width spaces or control characters)")
    if max_chars is not None and len(text) > max_chars:
        raise TextRejected(f"{where} has {len(text):,} characters; the limit is {max_chars:,} (serve.max_chars)")
    return text
