"""Great Expectations 1.x adapter: run declared rules over in-memory tables, whole or in chunks.

The only module that imports ``great_expectations`` (and pandas for it). It knows nothing about our files: it gets
``(table name, columns, [(Rule, expectation kwargs)])`` and returns, per table, which rules failed at which row
positions, the raw GE result (for ``ge_results.json``) and an HTML rendering.

A table too large to hold as one frame is run chunk by chunk (``Session.table(...).add(columns)`` per chunk): the
suite is the same for every chunk, and the chunk results merge into one result per table: counts summed, success
judged over the whole table (``mostly`` included), and only the first ``keep`` failing rows of each rule kept with
their values, so memory and the reports stay bounded however many rows fail.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

import great_expectations as gx
import great_expectations.expectations as gxe
import pandas as pd
from great_expectations.data_context.types.base import ProgressBarsConfig

SHOWN_CHARS = 200  # a failing value longer than this is cut in the reports (a 10 MB text stays out of the JSON)


@dataclass
class RuleResult:
    rule: Any  # selfsup.datasets.suites.Rule
    success: bool
    unexpected_index: list[int]  # table-wide row positions: the first ``keep`` failing rows
    unexpected_count: int  # all failing rows
    element_count: int


@dataclass
class TableRun:
    table: str
    results: list[RuleResult]
    raw: dict  # the GE ExpectationSuiteValidationResult as JSON (merged over chunks)
    gx_result: Any


def shorten(value: Any, limit: int = SHOWN_CHARS) -> Any:
    """A value as the reports show it: strings cut to ``limit`` characters, with the length they had."""
    if isinstance(value, str) and len(value) > limit:
        return f"{value[:limit]}... ({len(value):,} characters)"
    return value


class ChunkedRun:
    """One table's suite, run over its chunks in row order (see the module docstring)."""

    def __init__(self, session: Session, name: str, rules: list[tuple[Any, dict[str, Any]]], keep: int):
        self.name, self.rules, self.keep = name, rules, keep
        suite = gx.ExpectationSuite(name=f"selfsup:{name}:{session.serial()}")
        for rule, kwargs in rules:
            expectation_cls = getattr(gxe, rule.expectation)
            suite.add_expectation(expectation_cls(**kwargs, meta={"rule": rule.name, "explain": rule.explain}))
        suite = session.context.suites.add(suite)
        self.definition = session.context.validation_definitions.add(
            gx.ValidationDefinition(name=f"validate:{suite.name}", data=session.batch_definition, suite=suite))
        self.columns = sorted({kwargs["column"] for _, kwargs in rules})
        self.rows = 0
        self.carrier = None  # the first chunk's GE result object, updated to describe the whole table
        self.counts = {rule.name: Counter() for rule, _ in rules}  # element / unexpected / missing / chunks_failed
        self.kept: dict[str, list[int]] = {rule.name: [] for rule, _ in rules}
        self.values: dict[str, list[Any]] = {rule.name: [] for rule, _ in rules}
        self.value_counts: dict[str, Counter] = {rule.name: Counter() for rule, _ in rules}

    def add(self, columns: dict[str, list[Any]]) -> dict[str, list[int]]:
        """Run the suite over one chunk; returns, per failing rule, the chunk positions of the failing rows that are
        kept (the first ``keep`` of the table)."""
        # only the columns an expectation reads: a derived column (a length, a flag) stands in for a long text
        frame = pd.DataFrame({k: pd.Series(columns[k], dtype=object) for k in self.columns})
        fmt = {"result_format": "SUMMARY", "partial_unexpected_count": self.keep}
        result = self.definition.run(batch_parameters={"dataframe": frame}, result_format=fmt)
        by_rule = {r.expectation_config.meta["rule"]: r for r in result.results}
        kept_here: dict[str, list[int]] = {}
        for rule, _ in self.rules:
            r = by_rule[rule.name]
            if r.exception_info and r.exception_info.get("raised_exception"):
                raise RuntimeError(f"{self.name}: expectation for rule '{rule.name}' crashed: {r.exception_info}")
            info = r.result or {}
            count = self.counts[rule.name]
            count["element"] += int(info.get("element_count") or len(frame))
            count["unexpected"] += int(info.get("unexpected_count") or 0)
            count["missing"] += int(info.get("missing_count") or 0)
            count["failed_chunks"] += 0 if r.success else 1
            room = self.keep - len(self.kept[rule.name])
            positions = [int(i) for i in info.get("partial_unexpected_index_list") or []][: max(room, 0)]
            if positions:
                kept_here[rule.name] = positions
                self.kept[rule.name] += [self.rows + i for i in positions]
                self.values[rule.name] += [shorten(v) for v in (info.get("partial_unexpected_list") or [])[
                    : len(positions)]]
            for entry in info.get("partial_unexpected_counts") or []:
                if "value" in entry:
                    self.value_counts[rule.name][_hashable(shorten(entry["value"]))] += int(entry["count"])
        if self.carrier is None:
            self.carrier = result
        self.rows += len(frame)
        return kept_here

    def finish(self) -> TableRun:
        """The merged result of every chunk (an empty table is run once, with no rows)."""
        if self.carrier is None:
            self.add({column: [] for column in self.columns})
        by_rule = {r.expectation_config.meta["rule"]: r for r in self.carrier.results}
        results = []
        for rule, kwargs in self.rules:
            count = self.counts[rule.name]
            nonnull = count["element"] - count["missing"]
            if "mostly" in kwargs:  # GE's rule: the share of expected values among the non-null ones
                success = nonnull == 0 or (nonnull - count["unexpected"]) / nonnull >= kwargs["mostly"]
            else:
                success = count["failed_chunks"] == 0
            r = by_rule[rule.name]
            r.success = success
            total = count["element"]
            r.result = {
                **(r.result or {}),
                "element_count": total,
                "unexpected_count": count["unexpected"],
                "unexpected_percent": 100 * count["unexpected"] / nonnull if nonnull else None,
                "unexpected_percent_total": 100 * count["unexpected"] / total if total else None,
                "partial_unexpected_list": self.values[rule.name],
                "partial_unexpected_index_list": self.kept[rule.name],
                "partial_unexpected_counts": [{"value": v, "count": c}
                                              for v, c in self.value_counts[rule.name].most_common(self.keep)],
            }
            if "missing_count" in r.result:
                r.result.update(missing_count=count["missing"],
                                missing_percent=100 * count["missing"] / total if total else None,
                                unexpected_percent_nonmissing=r.result["unexpected_percent"])
            results.append(RuleResult(rule, success, self.kept[rule.name], count["unexpected"], total))
        carrier = self.carrier
        carrier.success = all(r.success for r in results)
        failed = sum(not r.success for r in results)
        carrier.statistics = {"evaluated_expectations": len(results), "successful_expectations": len(results) - failed,
                              "unsuccessful_expectations": failed,
                              "success_percent": 100 * (len(results) - failed) / len(results) if results else None}
        carrier.meta = {**(carrier.meta or {}), "selfsup_rows": self.rows}
        return TableRun(self.name, results, carrier.to_json_dict(), carrier)


def _hashable(value: Any) -> Any:
    return value if isinstance(value, (str, int, float, bool, type(None))) else repr(value)


class Session:
    """One ephemeral GE context for a validation run; ``table()`` starts a table's chunked run."""

    def __init__(self):
        self.context = gx.get_context(mode="ephemeral")
        self.context.variables.progress_bars = ProgressBarsConfig(globally=False)
        self.batch_definition = (
            self.context.data_sources.add_pandas(name="selfsup")
            .add_dataframe_asset(name="tables")
            .add_batch_definition_whole_dataframe(name="whole")
        )
        self._serial = 0

    def serial(self) -> int:
        self._serial += 1
        return self._serial

    def table(self, name: str, rules: list[tuple[Any, dict[str, Any]]], keep: int) -> ChunkedRun:
        return ChunkedRun(self, name, rules, keep)


def run_suites(tables: list[tuple[str, dict[str, list[Any]], list[tuple[Any, dict[str, Any]]]]],
               keep: int = 1000) -> list[TableRun]:
    """Each table whole (one chunk); ``keep`` failing rows per rule are kept with their positions."""
    session = Session()
    runs = []
    for name, columns, rules in tables:
        run = session.table(name, rules, keep)
        run.add(columns)
        runs.append(run.finish())
    return runs
def render_html(runs: list[TableRun]) -> str:
    """One HTML page: a table of contents, then GE's own rendering of each result (failures first)."""
    from great_expectations.render.renderer import ValidationResultsPageRenderer
    from great_expectations.render.view import DefaultJinjaPageView

    renderer, view = ValidationResultsPageRenderer(), DefaultJinjaPageView()
    ordered = sorted(runs, key=lambda run: (all(r.success for r in run.results), run.table))
    toc = "".join(
        f'<li><a href="#{run.table}">{run.table}</a>: '
        f'{"passed" if all(r.success for r in run.results) else "<b>FAILED</b>"}</li>'
        for run in ordered
    )
    sections = "".join(
        f'<section id="{run.table}"><h2>{run.table}</h2>{view.render(renderer.render(run.gx_result))}</section>'
        for run in ordered
    )
    return f"<!doctype html><html><head><meta charset='utf-8'><title>selfsup data validation</title></head>" \
           f"<body><h1>selfsup data validation</h1><ul>{toc}</ul>{sections}</body></html>"
