"""The data-validation suites, declared in one place.

Each ``Rule`` names a Great Expectations 1.x expectation (by its class name in ``great_expectations.expectations``)
and how to parametrize it from the config. The rules run over *tables* that ``validation.py`` prepares from the
files (one row per text, with derived columns such as ``utf8_valid`` or ``n_splits``):

* ``corpus``   — the unlabeled corpus (``data.corpus``), one row per JSON line
* ``labelled`` — each split file of each labelled task, one row per CSV row
* ``classes``  — per split file, one row per declared label with its count (row = label)
* ``splits``   — per task, all split files together, with the number of splits each text occurs in
* ``batch``    — an incoming batch of texts for a flow to score (monitoring, routing), one row per CSV row

Nothing here imports Great Expectations; ``selfsup.adapters.gx`` turns these declarations into expectations.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from selfsup.config import TableRules

# kwargs(rules, declared_labels) -> expectation keyword arguments
KwargsFn = Callable[[TableRules, list[str]], dict[str, Any]]


@dataclass(frozen=True)
class Rule:
    name: str
    table: str  # corpus | labelled | classes | splits
    expectation: str  # class name in great_expectations.expectations
    kwargs: KwargsFn
    explain: str  # what a failing row means, for the error message
    column: str  # the column whose failing values are shown

    def applies(self, rules: TableRules) -> bool:
        """Rules switched off by configuration (e.g. ``min_per_class: 0``) are not run."""
        if self.name == "min_per_class":
            return rules.min_per_class > 0
        return True


def _length(rules: TableRules, _: list[str]) -> dict[str, Any]:
    # on the derived length column rather than the texts: Great Expectations never holds a 10 MB text
    return {"column": "text_length", "min_value": rules.min_chars, "max_value": rules.max_chars}


def _duplicate_rate(rules: TableRules, _: list[str]) -> dict[str, Any]:
    return {"column": "is_duplicate", "value_set": [False], "mostly": 1.0 - rules.max_duplicate_rate}


_TEXT_RULES = (
    ("well_formed", "ExpectColumnValuesToBeInSet", lambda r, _: {"column": "well_formed", "value_set": [True]},
     "the row cannot be parsed (not a JSON object with a string source and text, or a CSV row with the wrong "
     "number of fields)", "raw"),
    ("non_empty", "ExpectColumnValuesToNotBeNull", lambda r, _: {"column": "text_nonblank"},
     "the text is missing or only whitespace and invisible characters (zero-width, format or control)", "text"),
    ("utf8", "ExpectColumnValuesToBeInSet", lambda r, _: {"column": "utf8_valid", "value_set": [True]},
     "the bytes are not valid UTF-8", "text"),
    ("no_nul", "ExpectColumnValuesToBeInSet", lambda r, _: {"column": "no_nul", "value_set": [True]},
     "the text contains a NUL character (U+0000), which tokenizers and C-based tools treat as the end of text",
     "text"),
    ("length_bounds", "ExpectColumnValuesToBeBetween", _length,
     "the text length is outside [min_chars, max_chars]", "text"),
    ("duplicate_rate", "ExpectColumnValuesToBeInSet", _duplicate_rate,
     "the text repeats an earlier row (case/space-insensitive) and the duplicate rate exceeds max_duplicate_rate",
     "text"),
)

RULES: tuple[Rule, ...] = (
    *(Rule(name, "corpus", exp, kw, explain, col) for name, exp, kw, explain, col in _TEXT_RULES),
    Rule("no_test_text_in_corpus", "corpus", "ExpectColumnValuesToBeInSet",
         lambda r, _: {"column": "in_test_split", "value_set": [False]},
         "the text also appears in a labelled test split (evaluation leakage into pretraining)", "text"),
    *(Rule(name, "labelled", exp, kw, explain, col) for name, exp, kw, explain, col in _TEXT_RULES),
    Rule("label_in_set", "labelled", "ExpectColumnValuesToBeInSet",
         lambda r, labels: {"column": "label", "value_set": list(labels)},
         "the label is not in the declared label set (params.yaml data.tasks.<task>.labels)", "label"),
    Rule("min_per_class", "classes", "ExpectColumnValuesToBeBetween",
         lambda r, _: {"column": "count", "min_value": r.min_per_class},
         "the label has fewer examples than min_per_class", "count"),
    Rule("split_leakage", "splits", "ExpectColumnValuesToBeBetween",
         lambda r, _: {"column": "n_splits", "max_value": 1},
         "the same text (case/space-insensitive) is in more than one split", "text"),
)


RULES += tuple(Rule(name, "batch", exp, kw, explain, col) for name, exp, kw, explain, col in _TEXT_RULES)


def rules_for(table: str, rules: TableRules) -> list[Rule]:
    return [rule for rule in RULES if rule.table == table and rule.applies(rules)]
