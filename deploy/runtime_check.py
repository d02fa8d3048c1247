#!/usr/bin/env python3
"""Runs what the chart renders against the real binaries and PostgreSQL of this machine.

No cluster exists here, so the rendered Jobs and Deployments are executed as local processes,
with the environment Kubernetes would give them (secretKeyRef read from the rendered Secrets,
$(VAR) substituted in args, /usr/local/bin/<x> mapped to the workspace's debug binaries):

 1. the database-bootstrap Job's psql script (roles, schemas) against a fresh database;
 2. every migration Job, two at a time per service (the advisory lock makes racing safe);
 3. each service's role may use its own schema and nothing of another's;
 4. the five Deployments' containers start with their rendered environment (local ports instead
    of 50051/9090) and serve /metrics; SIGTERM makes each drain and exit in its grace period;
 5. the real scrape: `complaints up --demo 2` (the suite with sample complaints through the
    whole lifecycle) on spare ports; every metric the alert rules and the dashboard name must
    appear in what the five metrics endpoints export (histograms by their _bucket/_sum/_count).

  runtime_check.py MANIFESTS METRIC_NAMES_JSON BIN_DIR
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import yaml

ADMIN_URL = os.environ.get("DEPLOY_CHECK_ADMIN_URL", "postgres://postgres@127.0.0.1:5432/postgres")
# Below Linux's ephemeral range (32768–60999): an outgoing connection of this run can never
# already hold one of them (58054 was taken that way once, and `complaints up` could not start).
SERVICE_PORT_BASE = 26051  # gRPC of step 4; metrics at +1000
SCRAPE_PORT_BASE = 28051  # gRPC of `complaints up` in step 5; metrics at +1000
SCRAPE_DB = "complaints_deploy_scrape"
# Synthesised by Prometheus itself, never exported by a target.
PROMETHEUS_OWN = {"up", "scrape_duration_seconds", "scrape_samples_scraped"}

failures: list[str] = []


def fail(message: str) -> None:
    failures.append(message)
    print(f"FAIL {message}", file=sys.stderr)


def psql(sql: str, url: str = ADMIN_URL, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["psql", url, "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-c", sql],
        capture_output=True, text=True, check=check,
    )


def container_env(container: dict, secrets: dict, pod_name: str) -> dict[str, str]:
    env: dict[str, str] = {}
    for item in container.get("env", []):
        if "value" in item:
            value = str(item["value"])
        else:
            source = item["valueFrom"]
            if "secretKeyRef" in source:
                ref = source["secretKeyRef"]
                value = secrets[ref["name"]][ref["key"]]
            elif "fieldRef" in source:
                value = {"metadata.name": pod_name, "metadata.namespace": "complaints",
                         "spec.nodeName": "local"}[source["fieldRef"]["fieldPath"]]
            else:
                raise SystemExit(f"unsupported env source {source}")
        # Kubernetes expands $(VAR) of variables defined earlier in the list.
        env[item["name"]] = re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), value)
    return env


def local_command(command: list[str], bin_dir: Path) -> list[str]:
    return [str(bin_dir / Path(command[0]).name) if command[0].startswith("/usr/local/bin/") else command[0], *command[1:]]


def fetch(url: str, timeout: float = 2.0) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.read().decode()
    except OSError:
        return None


def wait_for(url: str, seconds: float, process: subprocess.Popen | None = None) -> str | None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            return None
        body = fetch(url)
        if body is not None:
            return body
        time.sleep(0.3)
    return None


def exported_names(text: str) -> set[str]:
    """Sample names, plus families announced by `# TYPE` (histograms: their three series)."""
    names = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()[:4]
            names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"} if kind == "histogram" else {name}
        elif line and not line.startswith("#"):
            names.add(re.match(r"[a-zA-Z_:][a-zA-Z0-9_:]*", line).group(0))
    return names


def stop(process: subprocess.Popen, grace: float) -> int | None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        return None


def main() -> int:
    manifests, names_file, bin_dir = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    objects = [d for d in yaml.safe_load_all(Path(manifests).read_text()) if d]
    secrets = {o["metadata"]["name"]: o.get("stringData", {}) for o in objects if o["kind"] == "Secret"}
    configmaps = {o["metadata"]["name"]: o.get("data", {}) for o in objects if o["kind"] == "ConfigMap"}
    jobs = [o for o in objects if o["kind"] == "Job"]
    deployments = [o for o in objects if o["kind"] == "Deployment"]
    comp = lambda o: o["metadata"]["labels"]["app.kubernetes.io/component"]  # noqa: E731
    scratch = Path(tempfile.mkdtemp(prefix="deploy-runtime-"))
    logs = scratch / "logs"
    logs.mkdir()

    # 1. bootstrap, as the rendered Job runs it.
    (bootstrap,) = [j for j in jobs if comp(j) == "database-bootstrap"]
    pod = bootstrap["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = container_env(container, secrets, "bootstrap")
    database = secrets[next(iter(s for s in secrets if s.endswith("-intake-db")))]["DATABASE_URL"].rsplit("/", 1)[1].split("?")[0]
    psql(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    mounts = {m["name"]: m["mountPath"] for m in container.get("volumeMounts", [])}
    sql_dir = scratch / "sql"
    sql_dir.mkdir()
    for volume in pod["volumes"]:
        if "configMap" in volume:
            for key, text in configmaps[volume["configMap"]["name"]].items():
                (sql_dir / key).write_text(text)
    args = [re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], a) for a in container["args"]]
    args = [a.replace(mounts["sql"], str(sql_dir)) for a in args]
    # Credentials: the admin of this machine's PostgreSQL (trust) stands in for the Secret's.
    run_env = {**os.environ, **env, "PGHOST": "127.0.0.1", "PGUSER": "postgres"}
    result = subprocess.run([*container["command"], *args], env=run_env, capture_output=True, text=True)
    if result.returncode != 0:
        fail(f"database-bootstrap Job failed: {result.stderr.strip()}")
        return 1
    subprocess.run([*container["command"], *args], env=run_env, capture_output=True, text=True, check=True)
    print(f"bootstrap: the rendered Job created database {database}, roles and schemas (ran twice: idempotent)")

    # 2. migration Jobs, two of each at once.
    migrations = [j for j in jobs if comp(j) == "migration"]
    running = []
    for job in migrations:
        (container,) = job["spec"]["template"]["spec"]["containers"]
        env = container_env(container, secrets, job["metadata"]["name"])
        for copy in (1, 2):
            log = open(logs / f"{job['metadata']['name']}-{copy}.log", "w")
            running.append((job["metadata"]["name"], subprocess.Popen(
                local_command(container["command"], bin_dir), env={**os.environ, **env}, stdout=log, stderr=log)))
    for name, process in running:
        if process.wait(timeout=120) != 0:
            fail(f"migration Job {name} exited {process.returncode}: {(logs / f'{name}-1.log').read_text()[-2000:]}")
    if failures:
        return 1
    print(f"migrations: {len(migrations)} rendered Jobs ran `<binary> migrate` as their own roles, two racing per service")

    # 3. each role owns its schema and can touch no other.
    admin_check_db = ADMIN_URL.rsplit("/", 1)[0] + f"/{database}"
    before = len(failures)
    roles = {}
    for deployment in deployments:
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        env = container_env(container, secrets, "x")
        url = env["DATABASE_URL"]
        owned = psql("SELECT nspname FROM pg_namespace WHERE pg_get_userbyid(nspowner) = current_user", url).stdout.split()
        roles[comp(deployment)] = (url, owned)
        tables = int(psql(f"SELECT count(*) FROM pg_tables WHERE schemaname = '{owned[0]}' AND tableowner = current_user", url).stdout or 0) if len(owned) == 1 else 0
        if len(owned) != 1 or tables == 0:
            fail(f"{comp(deployment)}: its role owns schemas {owned} with {tables} tables; expected its one schema, migrated")
    for service, (url, owned) in roles.items():
        for other, (_, their) in roles.items():
            if other == service or not their:
                continue
            table = psql(f"SELECT tablename FROM pg_tables WHERE schemaname = '{their[0]}' LIMIT 1", admin_check_db).stdout.strip()
            denied_read = psql(f'SELECT 1 FROM "{their[0]}"."{table}" LIMIT 1', url, check=False)
            denied_create = psql(f'CREATE TABLE "{their[0]}".intruder (i int)', url, check=False)
            if denied_read.returncode == 0 or denied_create.returncode == 0 or "permission denied" not in denied_read.stderr:
                fail(f"{service}'s role can reach schema {their[0]} of {other}")
        if psql("CREATE TABLE public.intruder (i int)", url, check=False).returncode == 0:
            fail(f"{service}'s role can create tables in schema public")
    if len(failures) == before:
        print(f"isolation: each of the {len(roles)} roles owns only its own schema; reading or creating in another's (or public) is denied")

    # 4. the Deployments' containers, as rendered.
    ports = {}
    for i, deployment in enumerate(sorted(deployments, key=comp)):
        ports[comp(deployment)] = SERVICE_PORT_BASE + i
    url_vars = {"INTAKE_URL": "intake", "CASES_URL": "case-management", "SLA_URL": "sla-timer", "SURVEY_URL": "feedback-survey"}
    processes = {}
    grace = {}
    for deployment in deployments:
        name = comp(deployment)
        pod = deployment["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        env = container_env(container, secrets, f"{name}-0")
        env["GRPC_LISTEN_ADDR"] = f"127.0.0.1:{ports[name]}"
        env["METRICS_LISTEN_ADDR"] = f"127.0.0.1:{ports[name] + 1000}"
        env["LOG_FORMAT"] = "text"
        for var, upstream in url_vars.items():
            if var in env:
                env[var] = f"http://127.0.0.1:{ports[upstream]}"
        grace[name] = pod["terminationGracePeriodSeconds"]
        log = open(logs / f"{name}.log", "w")
        processes[name] = subprocess.Popen(local_command(container["command"], bin_dir), env={**os.environ, **env}, stdout=log, stderr=log)
    for name, process in processes.items():
        body = wait_for(f"http://127.0.0.1:{ports[name] + 1000}/metrics", 60, process)
        if body is None:
            fail(f"{name} did not serve /metrics with the rendered environment: {(logs / f'{name}.log').read_text()[:3000]}")
    time.sleep(1)
    for name, process in processes.items():
        started = time.monotonic()
        code = stop(process, grace[name])
        took = time.monotonic() - started
        if code != 0:
            fail(f"{name}: after SIGTERM exited {code} (grace {grace[name]}s): {(logs / f'{name}.log').read_text()[-1500:]}")
        else:
            print(f"deployment {name}: started with the rendered environment, served /metrics, drained on SIGTERM in {took:.1f}s (grace {grace[name]}s)")
    if failures:
        return 1

    # 5. the real scrape, with traffic through the whole lifecycle.
    required = {n for n in json.loads(Path(names_file).read_text()) if ":" not in n}
    psql(f'DROP DATABASE IF EXISTS "{SCRAPE_DB}" WITH (FORCE)')
    psql(f'CREATE DATABASE "{SCRAPE_DB}"')
    scrape_url = ADMIN_URL.rsplit("/", 1)[0] + f"/{SCRAPE_DB}"
    log_path = logs / "complaints-up.log"
    with open(log_path, "w") as log:
        suite = subprocess.Popen(
            [str(bin_dir / "complaints"), "up", "--demo", "2", "--base-port", str(SCRAPE_PORT_BASE), "--host", "127.0.0.1"],
            env={**os.environ, "DATABASE_URL": scrape_url, "JWT_HS256_SECRET": "deploy-check-development-secret-0123456789"},
            stdout=log, stderr=log,
        )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and suite.poll() is None:
            text = log_path.read_text()
            if "demo:" in text or "demo failed" in text:
                break
            time.sleep(0.5)
        text = log_path.read_text()
        if "demo failed" in text or "demo:" not in text:
            fail(f"`complaints up --demo 2` did not complete its demo: {text[-2000:]}")
        time.sleep(2)  # let consumers and the SLA scheduler settle
        exported: set[str] = set()
        for i in range(5):
            body = fetch(f"http://127.0.0.1:{SCRAPE_PORT_BASE + 1000 + i}/metrics")
            if body is None:
                fail(f"no /metrics on port {SCRAPE_PORT_BASE + 1000 + i}")
            else:
                exported |= exported_names(body)
    finally:
        stop(suite, 40)
        psql(f'DROP DATABASE IF EXISTS "{SCRAPE_DB}" WITH (FORCE)', check=False)
    def is_exported(name: str) -> bool:
        if name in exported or name in PROMETHEUS_OWN:
            return True
        base = re.sub(r"_(bucket|sum|count)$", "", name)
        return base != name and any(f"{base}_{s}" in exported for s in ("bucket", "sum", "count"))
    pending_file = Path(__file__).with_name("metrics-pending.txt")
    pending = {l.strip() for l in pending_file.read_text().splitlines() if l.strip() and not l.startswith("#")}
    missing = sorted(n for n in required if not is_exported(n))
    stale = sorted(n for n in pending if is_exported(n) or n not in required)
    if stale:
        fail(f"{pending_file.name} lists metrics that are exported now (or no longer used): {stale}; remove them")
    if set(missing) - pending:
        fail(f"named by the alert rules or the dashboard but not exported by any service: {sorted(set(missing) - pending)}")
    if not failures:
        print(f"scrape: {len(required) - len(missing)} of the {len(required)} metrics named by the rules and the dashboard are exported ({len(exported)} names scraped)")
    if missing:
        print(f"PENDING (deploy/metrics-pending.txt; not exported yet, promised by the runtime contract): {', '.join(sorted(set(missing) & pending))}")
    psql(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)', check=False)
    if failures:
        print(f"logs of the processes: {logs}", file=sys.stderr)
        return 1
    shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
