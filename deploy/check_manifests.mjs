// Offline checks of deployment artefacts, run by deploy/verify with the npm packages of
// deploy/tools (installed outside the repository; DEPLOY_NODE_MODULES points at them).
//
//   node check_manifests.mjs validate FILE...   every object of every YAML file against the
//       Kubernetes API schemas of kubernetes-models (and the prometheus-operator CRDs); an
//       apiVersion/kind it has no model for is an error, not a pass.
//   node check_manifests.mjs metrics FILE       FILE holds JSON {where: PromQL}; prints the JSON
//       list of metric names the expressions select, parsed with Prometheus' own PromQL grammar
//       (@prometheus-io/lezer-promql); a syntax error is an error.
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const modules = process.env.DEPLOY_NODE_MODULES;
if (!modules) {
  console.error("DEPLOY_NODE_MODULES must point at the node_modules of deploy/tools");
  process.exit(2);
}
const load = (path) => import(pathToFileURL(join(modules, path)).href);

function modelModule(apiVersion) {
  if (apiVersion.startsWith("monitoring.coreos.com/")) {
    return `@kubernetes-models/prometheus-operator/${apiVersion}/index.js`;
  }
  return `kubernetes-models/${apiVersion}/index.js`;
}

async function validate(files) {
  const YAML = await load("yaml/dist/index.js");
  let objects = 0;
  const failures = [];
  const kinds = new Map();
  for (const file of files) {
    const docs = YAML.parseAllDocuments(readFileSync(file, "utf8"));
    for (const doc of docs) {
      if (doc.errors.length) {
        failures.push(`${file}: YAML: ${doc.errors.map((e) => e.message).join("; ")}`);
        continue;
      }
      const obj = doc.toJS();
      if (obj == null) continue;
      const where = `${file}: ${obj.kind}/${obj.metadata?.name}`;
      objects += 1;
      if (!obj.apiVersion || !obj.kind) {
        failures.push(`${where}: no apiVersion/kind`);
        continue;
      }
      let Model;
      try {
        Model = (await load(modelModule(obj.apiVersion)))[obj.kind];
      } catch (e) {
        Model = undefined;
      }
      if (typeof Model !== "function") {
        failures.push(`${where}: no schema for ${obj.apiVersion} ${obj.kind}`);
        continue;
      }
      try {
        new Model(obj).validate();
        const key = `${obj.apiVersion} ${obj.kind}`;
        kinds.set(key, (kinds.get(key) ?? 0) + 1);
      } catch (e) {
        failures.push(`${where}: ${e.message}`);
      }
    }
  }
  for (const failure of failures) console.error(`INVALID ${failure}`);
  const summary = [...kinds].map(([k, n]) => `${n} ${k}`).join(", ");
  console.log(`kubernetes-models: ${objects - failures.length}/${objects} objects valid (${summary})`);
  return failures.length === 0 && objects > 0;
}

// Grafana's variables are not PromQL; give them values of the right type before parsing.
function withoutGrafanaVariables(expr) {
  return expr
    .replaceAll("$__rate_interval", "5m")
    .replaceAll("$__interval", "1m")
    .replaceAll("$__range", "1h");
}

async function metricNames(file) {
  const { parser } = await load("@prometheus-io/lezer-promql/dist/index.es.js");
  const expressions = JSON.parse(readFileSync(file, "utf8"));
  const names = new Set();
  const failures = [];
  for (const [where, raw] of Object.entries(expressions)) {
    const expr = withoutGrafanaVariables(raw);
    const tree = parser.parse(expr);
    tree.iterate({
      enter(node) {
        if (node.type.isError) {
          failures.push(`${where}: PromQL syntax error at ${node.from}: ${expr}`);
          return false;
        }
        if (node.name === "VectorSelector") {
          const id = node.node.getChild("Identifier");
          if (id) names.add(expr.slice(id.from, id.to));
        }
        return undefined;
      },
    });
  }
  for (const failure of failures) console.error(failure);
  console.log(JSON.stringify([...names].sort()));
  return failures.length === 0;
}

const [command, ...args] = process.argv.slice(2);
let ok;
if (command === "validate") ok = await validate(args);
else if (command === "metrics") ok = await metricNames(args[0]);
else {
  console.error("usage: check_manifests.mjs validate FILE... | metrics FILE");
  ok = false;
}
process.exit(ok ? 0 : 1);
