/**
 * A report for a fleet: `--format prometheus`, the exposition node_exporter's textfile collector
 * reads, and `--output FILE`, which writes any report whole (a temporary file renamed over it) and only
 * over a regular file. probe.ts loads this file only for those options.
 *
 * ```ts
 * import { renderPrometheus, writeWhole } from "./textfile.ts";
 * writeWhole("/var/lib/prometheus/node-exporter/postcopy.prom", renderPrometheus(report));
 * ```
 */
import { quoted, STATUSES, typeOf } from "./shared.ts";
import type { Capability, Check, Report, VmAnswer } from "./types.ts";

/** Labels in the exposition format: backslash, quote and newline escaped. */
const labels = (pairs: Record<string, unknown>) => {
  const quote = (v: unknown) => String(v).replace(/[\\"\n]/g, (c) => (c === "\n" ? "\\n" : `\\${c}`));
  return `{${Object.entries(pairs).map(([k, v]) => `${k}="${quote(v)}"`)}}`;
};
type Sample = [labels: string, value: number];
const bool = (b: unknown) => (b === true ? 1 : 0);
const one = (value: number): Sample[] => [["", value]];
const known = (r: Report) => Object.entries(r.capabilities).filter(([c]) => !r.undetermined.includes(c as Capability));
const byStatus = (c: Check) => STATUSES.map((s): Sample => [labels({ id: c.id, status: s }), bool(c.status === s)]);
/** The causes that stand in the way of what the exit status stands for (postcopy-ram unless --require says). */
const headline = (r: Report) =>
  (r.diagnosis ?? []).filter((d) => d.blocks.some((cap) => r.required?.capabilities.includes(cap)));
/** --all's QEMUs (not what was no QEMU), and the labels that tell them apart: name, pid, user. */
const qemus = (r: Report) => (r.vms ?? []).filter((v) => v.answer !== "not a qemu");
const vm = (v: VmAnswer, more: Record<string, unknown> = {}) =>
  labels({ vm: v.name, pid: v.pid, user: v.user ?? "", ...more });
/** The gauges: name, help, and the samples a report gives it (none: the gauge is left out). */
const METRICS: Array<[name: string, help: string, samples: (r: Report) => Sample[]]> = [
  ["up", "1 when the probe answered what was asked, 0 when it could not.", (r) => one(r.error ? 0 : 1)],
  [
    "supported",
    "1 when QEMU can use postcopy-ram here (with --migrate or --qemu: what they found).",
    (r) => (r.error ? [] : one(bool(r.postcopy))),
  ],
  [
    "probe_supported",
    "1 when the probe's own checks say the QEMU that will run can.",
    (r) => (r.probe && r.probe.postcopy !== null ? one(bool(r.probe.postcopy)) : []),
  ],
  [
    "capability",
    "1 when a userfaultfd consumer can work here.",
    (r) => (r.capabilities ? known(r).map(([c, ok]): Sample => [labels({ capability: c }), bool(ok)]) : []),
  ],
  ["check", "1 on the status each check has, 0 on the others.", (r) => (r.checks ?? []).flatMap(byStatus)],
  [
    "cause",
    "1 for each cause that stands in the way of postcopy-ram here (or --require's), by its id (README, the causes).",
    (r) => headline(r).map((d): Sample => [labels({ cause: d.cause }), 1]),
  ],
  [
    "vm_up",
    "--all: 1 for each QEMU running here that was answered, 0 for one that could not be.",
    (r) => qemus(r).map((v): Sample => [vm(v), bool(v.answer !== "unknown")]),
  ],
  [
    "vm_supported",
    "--all: 1 for each QEMU running here that can migrate with postcopy, in its own context; 0 for one that cannot.",
    (r) => qemus(r).flatMap((v): Sample[] => (v.answer === "unknown" ? [] : [[vm(v), bool(v.answer === "supported")]])),
  ],
  [
    "vm_cause",
    "--all: 1 for each cause that stands in a running QEMU's way (postcopy-ram, or --require's), by its id.",
    (r) =>
      qemus(r).flatMap((v) => (v.report ? headline(v.report) : []).map((d): Sample => [vm(v, { cause: d.cause }), 1])),
  ],
  [
    "round_trip_seconds",
    "The kernel-mode write fault round trip, thread start to join, when both faults were served.",
    (r) => (r.roundTrip?.ok ? one(r.roundTrip.ns / 1e9) : []),
  ],
  [
    "qemu_accepts",
    "1 when the QEMU asked (--qemu) accepts postcopy-ram.",
    ({ qemu: q }) => (q ? [[labels({ version: q.version, path: q.path }), bool(q.accepts)]] : []),
  ],
  [
    "migration_ok",
    "1 when --migrate's postcopy migration completed with pages requested, 0 when it failed.",
    ({ migration: m }) => (m && m.ok !== null ? one(bool(m.ok)) : []),
  ],
  [
    "migration_blocktime_seconds",
    "The destination's postcopy-blocktime in --migrate: how long its vCPUs waited for pages.",
    ({ migration: m }) => (m?.blocktimeMs != null ? one(m.blocktimeMs / 1000) : []),
  ],
  [
    "migration_pages_requested",
    "The pages the destination asked the source for in --migrate (ram.postcopy-requests).",
    ({ migration: m }) => (m?.pagesRequested != null ? one(m.pagesRequested) : []),
  ],
  [
    "info",
    "The probe's version and the context it answered for.",
    ({ version, host: h }) => (h ? [[labels({ version, kernel: h.kernel, user: h.user, uid: h.uid }), 1]] : []),
  ],
];

/** Metrics for node_exporter's textfile collector: alert on postcopy_probe_supported == 0 or postcopy_probe_up == 0. */
export function renderPrometheus(report: Report): string {
  const gauge = ([name, help, of]: (typeof METRICS)[number]) => {
    const samples = of(report);
    const metric = `postcopy_probe_${name}`;
    return samples.length
      ? [`# HELP ${metric} ${help}`, `# TYPE ${metric} gauge`, ...samples.map(([l, v]) => `${metric}${l} ${v}`)]
      : [];
  };
  return `${METRICS.flatMap(gauge).join("\n")}\n`;
}

/**
 * Writes `text` to `output` whole: a temporary file in the same directory, renamed over it, so a
 * reader never sees half a report. Only a regular file is replaced: never a device (/dev/null), a FIFO,
 * a socket, a link or a directory. Throws `Cannot write "FILE": …` naming what failed.
 */
export function writeWhole(output: string, text: string) {
  const fs = require("node:fs") as typeof import("node:fs");
  const tmp = `${output}.${process.pid}.tmp`;
  const cannot = (why: string) => new Error(`Cannot write ${quoted(output)}: ${why}`);
  let there: import("node:fs").Stats | null = null;
  try {
    there = fs.lstatSync(output);
  } catch {
    // not there yet, or unreadable: the write below says which
  }
  if (there && !there.isFile()) throw cannot(`it is ${typeOf(there.mode)[1]}, not a regular file`);
  let made = false;
  try {
    fs.writeFileSync(tmp, text, { flag: "wx", mode: 0o644 });
    made = true;
    fs.renameSync(tmp, output);
  } catch (e) {
    if (made) fs.rmSync(tmp, { force: true });
    throw cannot((e as NodeJS.ErrnoException).code ?? (e as Error).message);
  }
}
