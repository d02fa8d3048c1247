#!/usr/bin/env python3
"""Lint a Helm chart and render its manifests with the real Helm engine, without a cluster.

No Helm binary can be installed here, so this drives Helm's Go code through the PyPI package
helm-sdkpy (a cgo build of Helm 4). Its API has `lint` but no `template`/dry-run, and install
needs a live cluster. The lint action, though, runs Helm's template engine over the chart with
its values.yaml: every template, the values schema, YAML well-formedness, Helm's own checks.
To get the rendered text out of it, the chart is copied to a scratch folder with

  * values.yaml replaced by the chart's values merged with the given values files (Helm's merge
    rules: maps merge, lists and scalars replace, null deletes the key), and
  * one extra template that `include`s every template file of the chart (Helm registers each
    file as a named template under its path) with the wanted release name and namespace, and
    hands the result, base64-encoded, to `fail`. In lint mode Helm logs `fail` messages instead
    of stopping, so the rendered text arrives in Helm's log on stderr, which is captured here.

Everything else Helm logs in lint mode is an error here: a `fail` or `required` of the chart
itself means the values are incomplete. Lint messages of severity warning or error fail too.
"""

from __future__ import annotations

import argparse
import base64
import copy
import json
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

import yaml

SEVERITY = {0: "UNKNOWN", 1: "INFO", 2: "WARNING", 3: "ERROR"}
DUMP_TEMPLATE = "zz-helm-render-dump.tpl.yaml"
MARKER = "HELMRENDER"


def merge_values(base, override):
    """Helm's coalescing of user values over chart values."""
    if not isinstance(base, dict) or not isinstance(override, dict):
        return copy.deepcopy(override)
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if value is None:
            merged.pop(key, None)
        elif isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_values(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def dump_template(chart_name: str, templates: list[str], release: str, namespace: str) -> str:
    names = " ".join(json.dumps(f"{chart_name}/templates/{t}") for t in templates)
    return (
        "{{- /* Added by deploy/helm_render.py: hands every rendered template to Helm's log. */ -}}\n"
        "{{- $release := merge (dict "
        f'"Name" {json.dumps(release)} "Namespace" {json.dumps(namespace)} '
        '"IsInstall" true "IsUpgrade" false "Revision" 1 "Service" "Helm") .Release }}\n'
        '{{- $ctx := merge (dict "Release" $release) . }}\n'
        f"{{{{- range $path := list {names} }}}}\n"
        f'{{{{- fail (printf "{MARKER} %s %s" $path (include $path $ctx | b64enc)) }}}}\n'
        "{{- end }}\n"
    )


def run_lint_capturing_log(chart_dir: Path, namespace: str) -> tuple[dict, str]:
    """Runs Helm's lint on chart_dir; returns its result and what Helm logged on stderr."""
    from helm_sdkpy import Configuration  # imported late: needs the venv
    from helm_sdkpy._ffi import ffi, get_library, string_from_c

    lib = get_library()
    config = Configuration(namespace=namespace)
    with tempfile.TemporaryFile() as log:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(log.fileno(), 2)
        try:
            out = ffi.new("char **")
            rc = lib.helm_sdkpy_lint(config._handle_value, str(chart_dir).encode(), out)
            error = None if rc == 0 else ffi.string(lib.helm_sdkpy_last_error()).decode()
            result = string_from_c(out[0]) if rc == 0 else ""
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        log.seek(0)
        logged = log.read().decode("utf-8", "replace")
    if error is not None:
        raise SystemExit(f"helm lint could not run: {error}")
    return json.loads(result), logged


def render(chart: Path, values_files: list[Path], release: str, namespace: str):
    chart_meta = yaml.safe_load((chart / "Chart.yaml").read_text())
    chart_name = chart_meta["name"]
    with tempfile.TemporaryDirectory(prefix="helm-render-") as scratch:
        work = Path(scratch) / chart_name
        shutil.copytree(chart, work, ignore=shutil.ignore_patterns("ci"))
        values = yaml.safe_load((chart / "values.yaml").read_text()) or {}
        for values_file in values_files:
            values = merge_values(values, yaml.safe_load(values_file.read_text()) or {})
        (work / "values.yaml").write_text(yaml.safe_dump(values, sort_keys=False))
        templates = sorted(
            p.name
            for p in (work / "templates").iterdir()
            if p.is_file() and not p.name.startswith("_") and p.suffix in (".yaml", ".yml", ".txt")
        )
        (work / "templates" / DUMP_TEMPLATE).write_text(
            dump_template(chart_name, templates, release, namespace)
        )
        result, logged = run_lint_capturing_log(work, namespace)

    problems = []
    for message in result.get("Messages") or []:
        severity = message.get("Severity", 0)
        if severity >= 2:
            problems.append(
                f"helm lint {SEVERITY.get(severity, severity)} in {message.get('Path')}"
                " (helm-sdkpy does not pass the message text; a template or values.schema.json"
                " check failed there)"
            )
    if any(m.get("Path") == "values.yaml" and m.get("Severity", 0) >= 2 for m in result.get("Messages") or []):
        problems.extend(explain_schema_errors(chart, values))
    rendered: dict[str, str] = {}
    for line in logged.splitlines():
        match = re.search(rf'message="{MARKER} (\S+) ([A-Za-z0-9+/=]*)"', line)
        if match:
            path = match.group(1).split("/templates/", 1)[1]
            rendered[path] = base64.b64decode(match.group(2)).decode("utf-8")
        elif line.strip():
            # A fail/required of the chart itself (lint mode only logs them), or any other
            # complaint of the engine.
            problems.append(f"helm: {line.strip()}")
    missing = sorted(set(templates) - set(rendered))
    if missing and not problems:
        problems.append(f"templates not rendered: {missing}")
    return rendered, problems


def explain_schema_errors(chart: Path, values: dict) -> list[str]:
    """Helm's verdict on values.schema.json comes without its text; say which values are wrong."""
    try:
        import jsonschema
    except ImportError:
        return []
    schema_file = chart / "values.schema.json"
    if not schema_file.exists():
        return []
    validator = jsonschema.Draft7Validator(json.loads(schema_file.read_text()))
    return [
        f"values.schema.json: {'.'.join(str(p) for p in error.absolute_path) or '(top)'}: {error.message}"
        for error in validator.iter_errors(values)
    ]


def documents(rendered: dict[str, str], chart_name: str) -> list[tuple[str, dict]]:
    """The Kubernetes objects of the rendered templates, as (source, object)."""
    objects = []
    for path, text in sorted(rendered.items()):
        if path == "NOTES.txt":
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                objects.append((f"{chart_name}/templates/{path}", doc))
    return objects


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("chart", type=Path)
    parser.add_argument(
        "--values", type=Path, action="append", default=[],
        help="values file merged over the chart's (repeatable; later ones win)",
    )
    parser.add_argument("--release", default="complaints")
    parser.add_argument("--namespace", default="complaints")
    parser.add_argument("--out", type=Path, required=True, help="folder for manifests.yaml and NOTES.txt")
    args = parser.parse_args()

    rendered, problems = render(args.chart, args.values, args.release, args.namespace)
    if problems:
        for problem in dict.fromkeys(problems):
            print(problem, file=sys.stderr)
        return 1
    chart_name = yaml.safe_load((args.chart / "Chart.yaml").read_text())["name"]
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "manifests.yaml", "w") as out:
        for source, obj in documents(rendered, chart_name):
            out.write(f"---\n# Source: {source}\n")
            out.write(yaml.safe_dump(obj, sort_keys=False))
    (args.out / "NOTES.txt").write_text(rendered.get("NOTES.txt", ""))
    count = len(documents(rendered, chart_name))
    print(f"rendered {count} objects from {len(rendered)} templates with the Helm engine (lint clean)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
