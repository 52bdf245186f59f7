// Validates the Prometheus Operator's resources (ServiceMonitor,
// PrometheusRule) in a rendered manifest against the CRDs' schemas, bundled
// by @kubernetes-models/prometheus-operator: offline, unlike a CRD catalog.
// Run by tests/k8s.rs from target/k8s-tools, where scripts/test installs them.
import fs from "node:fs";
import * as yaml from "js-yaml";
import { ServiceMonitor, PrometheusRule } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1";

const models = { ServiceMonitor, PrometheusRule };
const checked = [];
for (const doc of yaml.loadAll(fs.readFileSync(process.argv[2], "utf8"))) {
  if (!doc || doc.apiVersion !== "monitoring.coreos.com/v1") continue;
  const Model = models[doc.kind];
  if (!Model) throw new Error(`no schema here for ${doc.kind}`);
  new Model(doc).validate();
  checked.push(`${doc.kind}/${doc.metadata.name}`);
}
console.log(`valid: ${checked.join(" ")}`);
