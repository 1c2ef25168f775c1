"""The data card, ``data/README.md``: what the build produced, from where, and how it was cleaned and split.

The prose lives in ``templates/*.md`` (``string.Template``: ``${name}`` placeholders, no logic); this module only
computes the numbers and tables that fill them. The card is one of the built files, so it must come out byte for
byte the same for the same build: every table is in a fixed order and every number has a fixed format.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from importlib import resources
from string import Template

from selfsup.datasets.images import ImageBuildReport
from selfsup.datasets.sources import SOURCES
from selfsup.datasets.splits import SPLITS


@dataclass
class BuildReport:
    """Counts the data card reports; filled while building."""

    counts: dict[str, int] = field(default_factory=Counter)
    splits: dict[str, dict[str, Counter]] = field(default_factory=dict)
    corpus_docs: Counter = field(default_factory=Counter)
    corpus_words: Counter = field(default_factory=Counter)
    agreement: list[dict] = field(default_factory=list)  # one entry per second-pass file
    images: ImageBuildReport | None = None


def _template(name: str) -> Template:
    return Template(resources.files("selfsup.datasets").joinpath("templates").joinpath(name)
                    .read_text(encoding="utf-8"))


def _table(header: list[str], rows: list[list[str]], align: str = "---:") -> str:
    """A markdown table; every column after the first aligned by ``align`` (numbers: right)."""
    rule = "|---|" + f"{align}|" * (len(header) - 1)
    return "\n".join([_row(header), rule, *map(_row, rows)])


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def render_data_card(report: BuildReport) -> str:
    c = report.counts
    sources = _table(["source", "registry package", "sha256", "license"],
                     [[s.name, f"{s.registry}: `{s.spec}`", f"`{s.sha256[:16]}…`", s.license]
                      for s in SOURCES.values()],
                     align="---")
    corpus = _table(["source", "documents", "words"],
                    [*([source, f"{docs:,}", f"{report.corpus_words[source]:,}"]
                       for source, docs in report.corpus_docs.items()),
                     ["**total**", f"{sum(report.corpus_docs.values()):,}", f"{sum(report.corpus_words.values()):,}"]])
    removed = {k.removeprefix("corpus_"): v for k, v in c.items() if k.startswith("corpus_")}
    # an optional section is followed by a blank line, so a missing one leaves no gap
    optional = [render_agreement(report.agreement) if report.agreement else "",
                render_image_card(report.images) if report.images else ""]
    return _template("data_card.md").substitute(
        sources=sources,
        corpus=corpus,
        corpus_removed=", ".join(f"{k}: {v:,}" for k, v in sorted(removed.items())),
        split_tables="".join(f"### {task}\n\n{_split_table(splits)}\n\n" for task, splits in report.splits.items()),
        optional_sections="".join(section + "\n" for section in optional if section),
        **{key: f"{c[key]:,}" for key in ("intent_annotated", "intent_duplicates_dropped",
                                          "sentiment_duplicates_dropped", "sentiment_conflicting_duplicate_groups",
                                          "topic_duplicates_dropped", "tweets_empty_after_cleaning")},
    )


def _split_table(splits: dict[str, Counter]) -> str:
    """Examples per label and split of one task, labels in alphabetical order."""
    labels = sorted(set().union(*[set(s) for s in splits.values()]))
    return _table(["label", *SPLITS],
                  [*([label, *(f"{splits[s][label]:,}" for s in SPLITS)] for label in labels),
                   ["**total**", *(f"{sum(splits[s].values()):,}" for s in SPLITS)]])


def render_agreement(agreement: list[dict]) -> str:
    """Every second annotation pass against the final labels (``BuildReport.agreement``), one column per pass."""
    labels = sorted(set().union(*(entry["kappa_per_class"] for entry in agreement)))
    rows = [["items", *(f"{entry['items']:,}" for entry in agreement)],
            ["raw agreement", *(f"{entry['raw_agreement']:.1%}" for entry in agreement)],
            ["**Cohen's κ**", *(f"**{entry['kappa']:.3f}**" for entry in agreement)],
            *([f"κ {label} (one-vs-rest)", *(f"{entry['kappa_per_class'].get(label, float('nan')):.3f}"
                                             for entry in agreement)] for label in labels)]
    return _template("intent_agreement.md").substitute(
        table=_table(["", *(f"`{entry['file']}`" for entry in agreement)], rows),
        disagreements="".join(
            f"- `{entry['file']}`: " + (", ".join(f"{a}→{b} ×{n}" for (a, b), n in entry["disagreements"]) or "none")
            + "\n" for entry in agreement),
    )


def render_image_card(images: ImageBuildReport) -> str:
    """The Fashion-MNIST section: images per class and split, classes in label-index order."""
    classes = list(next(iter(images.per_class.values())))
    table = _table(["class", *images.per_class],
                   [*([name, *(f"{images.per_class[s][name]:,}" for s in images.per_class)] for name in classes),
                    ["**total**", *(f"{images.images[s]:,}" for s in images.per_class)]])
    return _template("image_card.md").substitute(classes=table)
