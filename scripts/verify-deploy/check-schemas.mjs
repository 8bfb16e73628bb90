// Schema checks that need the npm packages, for scripts/verify-deploy.sh.
//
//   node check-schemas.mjs <work-dir> <input.json>
//
// <input.json>: {"crds": [{"source": "...", "doc": {...}}],
//                "dashboards": [{"source": "...", "doc": {...}}]}
// <work-dir> must lie below the directory holding node_modules.
//
// 1. Each custom resource (ServiceMonitor, PrometheusRule, Certificate,
//    HTTPRoute) is
//    validated against its CRD's JSON schema by @kubernetes-models (types,
//    enums, patterns, required fields).
// 2. The CRD schemas accept unknown fields (the API server prunes them), so
//    every resource is also type-checked with the TypeScript compiler
//    against the model's interface: an unknown or misspelt field fails.
// 3. Every dashboard is type-checked against @grafana/schema's Dashboard,
//    and each panel's options and custom field config against its panel
//    plugin's types (timeseries, stat).
// Exits 1 with one line per problem when anything fails.

import { mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { spawnSync } from "node:child_process";
import path from "node:path";
import { fileURLToPath } from "node:url";

import { ServiceMonitor, PrometheusRule } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1";
import { Certificate } from "@kubernetes-models/cert-manager/cert-manager.io/v1";
import { HTTPRoute } from "@kubernetes-models/gateway-api/gateway.networking.k8s.io/v1";

const [workDir, inputPath] = process.argv.slice(2);
if (!workDir || !inputPath) {
  console.error("usage: node check-schemas.mjs <work-dir> <input.json>");
  process.exit(2);
}
const input = JSON.parse(readFileSync(inputPath, "utf8"));
const problems = [];

const models = {
  "monitoring.coreos.com/v1/ServiceMonitor": { model: ServiceMonitor, type: "IServiceMonitor", from: "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1" },
  "monitoring.coreos.com/v1/PrometheusRule": { model: PrometheusRule, type: "IPrometheusRule", from: "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1" },
  "cert-manager.io/v1/Certificate": { model: Certificate, type: "ICertificate", from: "@kubernetes-models/cert-manager/cert-manager.io/v1" },
  "gateway.networking.k8s.io/v1/HTTPRoute": { model: HTTPRoute, type: "IHTTPRoute", from: "@kubernetes-models/gateway-api/gateway.networking.k8s.io/v1" },
};

// ------------------------------------------------- 1. CRD JSON schemas ---
const crdChecks = [];
for (const [index, { source, doc }] of (input.crds ?? []).entries()) {
  const key = `${doc.apiVersion}/${doc.kind}`;
  const entry = models[key];
  if (!entry) {
    problems.push(`${source}: no schema for ${key}`);
    continue;
  }
  try {
    new entry.model(doc).validate();
  } catch (error) {
    problems.push(`${source}: ${key} ${doc.metadata?.name}: ${error.message}`);
  }
  crdChecks.push({ index, source, doc, entry });
}

// ------------------------------------------- 2.+3. TypeScript type checks ---
rmSync(workDir, { recursive: true, force: true });
mkdirSync(workDir, { recursive: true });

// JSON has no enums: map TypeScript enums to their literal values, so
// "absolute" satisfies ThresholdsMode and 1 satisfies DashboardCursorSync.
const jsonTypes = `
export type Json<T> =
  T extends string ? \`\${T}\` :
  T extends number ? (\`\${T}\` extends \`\${infer N extends number}\` ? N : never) :
  T extends boolean ? T :
  T extends null | undefined ? T :
  T extends ReadonlyArray<infer U> ? Array<Json<U>> :
  T extends object ? { [K in keyof T]: Json<T[K]> } : T;
`;
writeFileSync(path.join(workDir, "json.ts"), jsonTypes);

// One file per input; the source name in a comment maps errors back.
const sources = new Map();
const literal = (value) => JSON.stringify(value, null, 2);

for (const { index, source, doc, entry } of crdChecks) {
  const file = `crd_${index}.ts`;
  sources.set(file, source);
  // The models' TypeMeta types apiVersion and kind as string literals; the
  // rest of the object is checked field by field.
  writeFileSync(
    path.join(workDir, file),
    `// ${source}\nimport type { ${entry.type} } from "${entry.from}";\nimport type { Json } from "./json";\n` +
      `export const resource = ${literal(doc)} satisfies Json<${entry.type}>;\n`,
  );
}

const panelTypes = {
  timeseries: {
    from: "@grafana/schema/dist/esm/raw/composable/timeseries/panelcfg/x/TimeSeriesPanelCfg_types.gen",
    options: "Options",
    custom: "FieldConfig",
  },
  stat: {
    from: "@grafana/schema/dist/esm/raw/composable/stat/panelcfg/x/StatPanelCfg_types.gen",
    options: "Options",
    custom: null,
  },
};

for (const [index, { source, doc }] of (input.dashboards ?? []).entries()) {
  const file = `dashboard_${index}.ts`;
  sources.set(file, source);
  const lines = [
    `// ${source}`,
    `import type { Dashboard } from "@grafana/schema/dist/esm/raw/dashboard/x/Dashboard_types.gen";`,
    `import type { Json } from "./json";`,
  ];
  for (const [type, spec] of Object.entries(panelTypes)) {
    lines.push(`import type * as ${type}Cfg from "${spec.from}";`);
  }
  lines.push(`export const dashboard = ${literal(doc)} satisfies Json<Dashboard>;`);
  const panels = (doc.panels ?? []).flatMap((p) => (p.type === "row" ? [p, ...(p.panels ?? [])] : [p]));
  for (const [n, panel] of panels.entries()) {
    if (panel.type === "row") continue;
    const spec = panelTypes[panel.type];
    if (!spec) {
      problems.push(`${source}: panel "${panel.title}": type ${panel.type} has no schema check here; use ${Object.keys(panelTypes).join(" or ")}`);
      continue;
    }
    lines.push(`// panel "${panel.title}"`);
    lines.push(`export const options_${n} = ${literal(panel.options ?? {})} satisfies Json<${panel.type}Cfg.${spec.options}>;`);
    const custom = panel.fieldConfig?.defaults?.custom;
    if (custom !== undefined) {
      if (!spec.custom) {
        problems.push(`${source}: panel "${panel.title}": ${panel.type} panels take no fieldConfig.defaults.custom`);
      } else {
        lines.push(`export const custom_${n} = ${literal(custom)} satisfies Json<${panel.type}Cfg.${spec.custom}>;`);
      }
    }
  }
  writeFileSync(path.join(workDir, file), lines.join("\n") + "\n");
}

writeFileSync(
  path.join(workDir, "tsconfig.json"),
  JSON.stringify({
    compilerOptions: {
      strict: true,
      noEmit: true,
      module: "esnext",
      moduleResolution: "bundler",
      target: "es2022",
      skipLibCheck: true,
      types: [],
    },
    include: ["*.ts"],
  }),
);

// typescript's package exports hide bin/tsc from require.resolve.
const tsc = path.join(path.dirname(fileURLToPath(import.meta.url)), "node_modules", "typescript", "bin", "tsc");
const result = spawnSync(process.execPath, [tsc, "-p", workDir, "--pretty", "false"], { encoding: "utf8" });
if (result.status !== 0) {
  const output = `${result.stdout}${result.stderr}`.trim();
  for (const line of output.split("\n")) {
    const match = /^([^(]+)\((\d+),(\d+)\): (.*)$/.exec(line);
    if (match) {
      const file = path.basename(match[1]);
      problems.push(`${sources.get(file) ?? file} (generated ${file}:${match[2]}): ${match[4].slice(0, 400)}`);
    } else if (line.trim()) {
      problems.push(`tsc: ${line.slice(0, 400)}`);
    }
  }
  if (problems.length === 0) problems.push(`tsc exited ${result.status}`);
}

const crdCount = crdChecks.length;
const dashboardCount = (input.dashboards ?? []).length;
if (problems.length > 0) {
  for (const problem of problems) console.log(`FAIL ${problem}`);
  process.exit(1);
}
console.log(`ok: ${crdCount} custom resources and ${dashboardCount} dashboards match their schemas`);
