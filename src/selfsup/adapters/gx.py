"""Great Expectations 1.x adapter: run declared rules over in-memory tables.

The only module that imports ``great_expectations`` (and pandas for it). It knows nothing about our files: it gets
``(table name, columns, [(Rule, expectation kwargs)])`` and returns, per table, which rules failed at which row
positions, the raw GE result (for ``ge_results.json``) and an HTML rendering.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import great_expectations as gx
import great_expectations.expectations as gxe
import pandas as pd
from great_expectations.data_context.types.base import ProgressBarsConfig


@dataclass
class RuleResult:
    rule: Any  # selfsup.datasets.suites.Rule
    success: bool
    unexpected_index: list[int]
    unexpected_count: int
    element_count: int


@dataclass
class TableRun:
    table: str
    results: list[RuleResult]
    raw: dict  # the GE ExpectationSuiteValidationResult as JSON
    gx_result: Any


def _context():
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    return context


def run_suites(tables: list[tuple[str, dict[str, list[Any]], list[tuple[Any, dict[str, Any]]]]]) -> list[TableRun]:
    context = _context()
    batch_definition = (
        context.data_sources.add_pandas(name="selfsup")
        .add_dataframe_asset(name="tables")
        .add_batch_definition_whole_dataframe(name="whole")
    )
    runs = []
    for name, columns, rules in tables:
        frame = pd.DataFrame({k: pd.Series(v, dtype=object) for k, v in columns.items()})
        suite = gx.ExpectationSuite(name=f"selfsup:{name}")
        for rule, kwargs in rules:
            expectation_cls = getattr(gxe, rule.expectation)
            suite.add_expectation(expectation_cls(**kwargs, meta={"rule": rule.name, "explain": rule.explain}))
        suite = context.suites.add(suite)
        definition = context.validation_definitions.add(
            gx.ValidationDefinition(name=f"validate:{name}", data=batch_definition, suite=suite)
        )
        result = definition.run(batch_parameters={"dataframe": frame}, result_format="COMPLETE")
        by_rule = {r.expectation_config.meta["rule"]: r for r in result.results}
        rule_results = []
        for rule, _ in rules:
            r = by_rule[rule.name]
            info = r.result or {}
            if r.exception_info and r.exception_info.get("raised_exception"):
                raise RuntimeError(f"{name}: expectation for rule '{rule.name}' crashed: {r.exception_info}")
            rule_results.append(RuleResult(
                rule=rule,
                success=bool(r.success),
                unexpected_index=[int(i) for i in info.get("unexpected_index_list") or []],
                unexpected_count=int(info.get("unexpected_count") or 0),
                element_count=int(info.get("element_count") or len(frame)),
            ))
        runs.append(TableRun(name, rule_results, result.to_json_dict(), result))
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
