// Checks custom resources against the models that @kubernetes-models/* generate
// from the projects' own CRD schemas (KEDA, Strimzi, Prometheus Operator).
//   node validate_crds.mjs <folder holding node_modules> < objects.json
// Prints a JSON list: one {kind, name, error} per object (error null when valid).
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const PACKAGES = {
  "keda.sh": "@kubernetes-models/keda",
  "kafka.strimzi.io": "@kubernetes-models/strimzi-kafka-operator",
  "monitoring.coreos.com": "@kubernetes-models/prometheus-operator",
};

const root = process.argv[2];
const objects = JSON.parse(readFileSync(0, "utf8"));
const results = [];
for (const obj of objects) {
  const [group, version] = obj.apiVersion.split("/");
  const pkg = PACKAGES[group];
  const name = obj.metadata?.name ?? "";
  if (!pkg) {
    results.push({ kind: obj.kind, name, error: `no model for API group ${group}` });
    continue;
  }
  const file = join(root, "node_modules", pkg, group, version, `${obj.kind}.js`);
  let error = null;
  try {
    const mod = await import(pathToFileURL(file).href);
    new mod[obj.kind](obj).validate();
  } catch (exc) {
    error = String(exc?.message ?? exc);
  }
  results.push({ kind: obj.kind, name, error });
}
process.stdout.write(JSON.stringify(results));
