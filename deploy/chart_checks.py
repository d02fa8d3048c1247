#!/usr/bin/env python3
"""Checks of the rendered chart that schemas cannot make, and the pieces deploy/verify extracts.

  chart_checks.py policy MANIFESTS          what ARCHITECTURE.md and the issue ask of every
                                            object: security context, probes, drain, scaling,
                                            labels, OTel wiring, the network paths of the suite
  chart_checks.py rules MANIFESTS OUT       the PrometheusRule's spec as a promtool rules file
  chart_checks.py expressions MANIFESTS DASHBOARD OUT
                                            every PromQL expression of the rules and the
                                            dashboard, as JSON {where: expr}
  chart_checks.py k8s MANIFESTS OUTDIR      the plain manifests of k8s/ (namespace + objects
                                            grouped by purpose, Helm hook annotations dropped)
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import yaml

SERVICES = ["intake", "case-management", "sla-timer", "feedback-survey", "performance-scoring"]
# Who calls whom (ARCHITECTURE.md; the runtime contract of issue 9): caller -> callees.
CALLS = {
    "intake": {"case-management"},
    "case-management": {"intake", "feedback-survey"},
    "sla-timer": {"case-management", "feedback-survey"},
    "feedback-survey": {"case-management"},
    "performance-scoring": {"case-management", "sla-timer", "feedback-survey"},
}
STANDARD_LABELS = [
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/version",
    "app.kubernetes.io/managed-by",
    "app.kubernetes.io/part-of",
]


def load(path: str) -> list[dict]:
    return [d for d in yaml.safe_load_all(Path(path).read_text()) if d]


def component(obj: dict) -> str | None:
    return obj["metadata"].get("labels", {}).get("app.kubernetes.io/component")


def components_of(peers: list[dict]) -> set[str]:
    return {
        p["podSelector"]["matchLabels"]["app.kubernetes.io/component"]
        for p in peers or []
        if "podSelector" in p
        and "namespaceSelector" not in p
        and "app.kubernetes.io/component" in p["podSelector"].get("matchLabels", {})
    }


def check_policy(objects: list[dict]) -> list[str]:
    problems: list[str] = []

    def expect(condition: bool, message: str) -> None:
        if not condition:
            problems.append(message)

    by_kind: dict[str, dict[str, dict]] = {}
    for obj in objects:
        by_kind.setdefault(obj["kind"], {})[obj["metadata"]["name"]] = obj
        labels = obj["metadata"].get("labels", {})
        for label in STANDARD_LABELS:
            expect(label in labels, f"{obj['kind']}/{obj['metadata']['name']}: label {label} missing")

    deployments = {component(d): d for d in by_kind.get("Deployment", {}).values()}
    expect(sorted(deployments) == sorted(SERVICES), f"Deployments {sorted(deployments)} != the five services")
    for name, deployment in deployments.items():
        where = f"Deployment {name}"
        pod = deployment["spec"]["template"]["spec"]
        psc = pod.get("securityContext", {})
        expect(psc.get("runAsNonRoot") is True, f"{where}: pod runAsNonRoot")
        expect(psc.get("seccompProfile", {}).get("type") == "RuntimeDefault", f"{where}: seccomp RuntimeDefault")
        expect(pod.get("automountServiceAccountToken") is False, f"{where}: service account token mounted")
        (container,) = pod["containers"]
        csc = container.get("securityContext", {})
        expect(csc.get("readOnlyRootFilesystem") is True, f"{where}: readOnlyRootFilesystem")
        expect(csc.get("allowPrivilegeEscalation") is False, f"{where}: allowPrivilegeEscalation")
        expect(csc.get("capabilities", {}).get("drop") == ["ALL"], f"{where}: capabilities drop ALL")
        expect(container["command"] == [f"/usr/local/bin/{name}"], f"{where}: runs {container['command']}")
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        env = {e["name"]: e for e in container["env"]}
        grpc_port = ports.get("grpc")
        expect(env.get("GRPC_LISTEN_ADDR", {}).get("value") == f"0.0.0.0:{grpc_port}", f"{where}: GRPC_LISTEN_ADDR")
        expect(
            env.get("METRICS_LISTEN_ADDR", {}).get("value") == f"0.0.0.0:{ports.get('metrics')}",
            f"{where}: METRICS_LISTEN_ADDR",
        )
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            expect(container.get(probe, {}).get("grpc", {}).get("port") == grpc_port, f"{where}: {probe} is not a gRPC probe")
        expect("limits" in container.get("resources", {}) and "requests" in container["resources"], f"{where}: resources")
        grace = int(env["SHUTDOWN_GRACE"]["value"].rstrip("s"))
        pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
        expect(
            pod["terminationGracePeriodSeconds"] >= pre_stop + grace,
            f"{where}: terminationGracePeriodSeconds {pod['terminationGracePeriodSeconds']} < preStop {pre_stop} + drain {grace}",
        )
        expect(env.get("OTEL_SERVICE_NAME", {}).get("value") == name, f"{where}: OTEL_SERVICE_NAME")
        expect("DATABASE_URL" in env and "secretKeyRef" in env["DATABASE_URL"].get("valueFrom", {}), f"{where}: DATABASE_URL from a Secret")
        expect(
            "JWT_PUBLIC_KEY_FILE" in env or "JWT_HS256_SECRET" in env,
            f"{where}: no JWT verification key",
        )
        urls = {k for k in env if k.endswith("_URL") and k != "DATABASE_URL"}
        expected_urls = {
            {"intake": "INTAKE_URL", "case-management": "CASES_URL", "sla-timer": "SLA_URL", "feedback-survey": "SURVEY_URL"}[c]
            for c in CALLS[name]
        }
        expect(urls == expected_urls, f"{where}: upstream variables {sorted(urls)} != {sorted(expected_urls)}")

    for kind in ("Service", "PodDisruptionBudget", "ServiceAccount"):
        have = {component(o) for o in by_kind.get(kind, {}).values()}
        expect(set(SERVICES) <= have, f"{kind}: missing for {sorted(set(SERVICES) - have)}")
    hpas = {o["spec"]["scaleTargetRef"]["name"] for o in by_kind.get("HorizontalPodAutoscaler", {}).values()}
    for name, deployment in deployments.items():
        if "replicas" not in deployment["spec"]:
            expect(deployment["metadata"]["name"] in hpas, f"Deployment {name}: neither replicas nor an HPA")
    for service in by_kind.get("Service", {}).values():
        if component(service) in SERVICES:
            names = {p["name"] for p in service["spec"]["ports"]}
            expect(names == {"grpc", "metrics"}, f"Service {service['metadata']['name']}: ports {names}")

    jobs = [j for j in by_kind.get("Job", {}).values() if component(j) == "migration"]
    migrated = set()
    for job in jobs:
        hooks = set(job["metadata"].get("annotations", {}).get("helm.sh/hook", "").split(","))
        expect({"pre-install", "pre-upgrade"} <= hooks, f"Job {job['metadata']['name']}: not a pre-install/pre-upgrade hook")
        (container,) = job["spec"]["template"]["spec"]["containers"]
        binary = container["command"][0].rsplit("/", 1)[1]
        expect(container["command"][1:] == ["migrate"], f"Job {job['metadata']['name']}: not `{binary} migrate`")
        migrated.add(binary)
    expect(migrated == set(SERVICES), f"migration Jobs for {sorted(migrated)}, not all five services")

    # Network paths: exactly the calls of the architecture, plus configured outside clients.
    policies = {component(p): p for p in by_kind.get("NetworkPolicy", {}).values()}
    for name in deployments:
        policy = policies.get(name)
        if policy is None:
            problems.append(f"NetworkPolicy {name}: missing")
            continue
        grpc_port = deployments[name]["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"]
        callers = {c for c, callees in CALLS.items() if name in callees}
        ingress_grpc = [r for r in policy["spec"]["ingress"] if any(p["port"] == grpc_port for p in r["ports"])]
        allowed = set().union(*(components_of(r.get("from")) for r in ingress_grpc)) if ingress_grpc else set()
        expect(allowed == callers, f"NetworkPolicy {name}: gRPC ingress from {sorted(allowed)}, architecture says {sorted(callers)}")
        egress_grpc = [r for r in policy["spec"]["egress"] if any(p["port"] == grpc_port for p in r.get("ports", []))]
        reach = set().union(*(components_of(r.get("to")) for r in egress_grpc)) if egress_grpc else set()
        expect(reach == CALLS[name], f"NetworkPolicy {name}: gRPC egress to {sorted(reach)}, architecture says {sorted(CALLS[name])}")
        egress_ports = {p["port"] for r in policy["spec"]["egress"] for p in r.get("ports", [])}
        expect({53, 5432} <= egress_ports, f"NetworkPolicy {name}: egress to DNS and PostgreSQL")
    return problems


def prometheus_rule(objects: list[dict]) -> dict:
    rules = [o for o in objects if o["kind"] == "PrometheusRule"]
    if len(rules) != 1:
        raise SystemExit(f"expected one PrometheusRule, found {len(rules)}")
    return rules[0]["spec"]


def expressions(objects: list[dict], dashboard_path: str) -> dict[str, str]:
    found = {}
    for group in prometheus_rule(objects)["groups"]:
        for i, rule in enumerate(group["rules"]):
            found[f"rule {group['name']}/{rule.get('alert') or rule.get('record')}#{i}"] = rule["expr"]
    dashboard = json.loads(Path(dashboard_path).read_text())
    panels = []
    for panel in dashboard["panels"]:
        panels.append(panel)
        panels.extend(panel.get("panels", []))
    for panel in panels:
        for target in panel.get("targets", []):
            found[f"dashboard panel {panel['title']!r} {target['refId']}"] = target["expr"]
    for variable in dashboard.get("templating", {}).get("list", []):
        query = variable.get("query")
        query = query.get("query") if isinstance(query, dict) else query
        match = re.fullmatch(r"label_values\((\w+),\s*\w+\)", query or "")
        if match:
            found[f"dashboard variable {variable['name']}"] = match.group(1)
    return found


HOOK_ANNOTATIONS = ("helm.sh/hook", "helm.sh/hook-weight", "helm.sh/hook-delete-policy")


def plain(obj: dict) -> dict:
    annotations = obj["metadata"].get("annotations")
    if annotations:
        for key in HOOK_ANNOTATIONS:
            annotations.pop(key, None)
        if not annotations:
            del obj["metadata"]["annotations"]
    labels = obj["metadata"].get("labels", {})
    if labels.get("app.kubernetes.io/managed-by") == "Helm":
        labels["app.kubernetes.io/managed-by"] = "kubectl"
    template_labels = obj.get("spec", {}).get("template", {}).get("metadata", {}).get("labels", {})
    if template_labels.get("app.kubernetes.io/managed-by") == "Helm":
        template_labels["app.kubernetes.io/managed-by"] = "kubectl"
    return obj


def k8s_files(objects: list[dict], namespace: str) -> dict[str, list[dict]]:
    files: dict[str, list[dict]] = {
        "00-namespace.yaml": [
            {
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {
                    "name": namespace,
                    "labels": {
                        "app.kubernetes.io/part-of": "complaints",
                        "pod-security.kubernetes.io/enforce": "restricted",
                        "pod-security.kubernetes.io/enforce-version": "latest",
                    },
                },
            }
        ],
        "10-postgres-dev.yaml": [],
        "20-secrets-dev.yaml": [],
        "30-database-jobs.yaml": [],
        "40-services.yaml": [],
        "50-monitoring.yaml": [],
    }
    for obj in objects:
        comp = component(obj)
        if obj["apiVersion"].startswith("monitoring.coreos.com/") or comp is None and obj["kind"] == "ConfigMap":
            name = "50-monitoring.yaml"
        elif comp == "dev-postgresql":
            name = "10-postgres-dev.yaml"
        elif obj["kind"] == "Secret":
            name = "20-secrets-dev.yaml"
        elif comp in ("migration", "database-bootstrap"):
            name = "30-database-jobs.yaml"
        else:
            name = "40-services.yaml"
        files[name].append(plain(obj))
    return files


HEADER = """\
# GENERATED by deploy/verify from the Helm chart (helm/, values deploy/k8s-values.yaml); do not
# edit: change the chart and run `deploy/verify --write-k8s`. CI fails when this file and the
# chart disagree. Apply in order: see k8s/README.md.
"""


def main() -> int:
    command, *args = sys.argv[1:]
    if command == "policy":
        problems = check_policy(load(args[0]))
        for problem in problems:
            print(f"POLICY {problem}", file=sys.stderr)
        if not problems:
            print(f"policy: {args[0]} meets the deployment requirements")
        return 1 if problems else 0
    if command == "rules":
        Path(args[1]).write_text(yaml.safe_dump(prometheus_rule(load(args[0])), sort_keys=False, allow_unicode=True))
        return 0
    if command == "expressions":
        Path(args[2]).write_text(json.dumps(expressions(load(args[0]), args[1]), ensure_ascii=False, indent=1))
        return 0
    if command == "k8s":
        out = Path(args[1])
        out.mkdir(parents=True, exist_ok=True)
        namespace = args[2] if len(args) > 2 else "complaints"
        for name, objs in k8s_files(load(args[0]), namespace).items():
            body = "".join("---\n" + yaml.safe_dump(o, sort_keys=False, allow_unicode=True) for o in objs)
            (out / name).write_text(HEADER + body)
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
