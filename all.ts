/**
 * --all: every QEMU running on this host, each answered exactly as --pid answers it (a child probe that takes on that
 * process's context), several at a time and the whole run bounded, beside the host's own answer. Before a node is
 * drained: which VMs can go with postcopy, and why the others cannot. probe.ts loads this file only for --all.
 *
 * ```ts
 * import { everyVm, renderVms } from "./all.ts";
 * report.vms = await everyVm(sys, opts); // each VM's answer, its first cause, its whole --pid document
 * ```
 */

import { runInContext } from "./context.ts";
import type { Sys } from "./ffi.ts";
import * as S from "./shared.ts";
import type * as T from "./types.ts";

/** How many processes are answered at once, the bound on the whole run, and on each process's answer. */
const [AT_ONCE, ALL_MS, EACH_MS] = [4, 300_000, 30_000];
/** A command line is read this far to find a process and its name: QEMU's program and -name come first. */
const ARGS_MAX = 1 << 16;

/** Whether a process is still there and running (not a zombie): one gone since is left out, not unanswered. */
const running = (sys: Sys, pid: number) => {
  const stat = sys.readText(`/proc/${pid}/stat`, 4096);
  return stat !== null && !/^\d+ \(.*\) [ZX] /s.test(stat);
};
/** A process's arguments, read as far as ARGS_MAX, UTF-8 (as QEMU's -name is). */
const argsOf = (sys: Sys, pid: number) => {
  const text = sys.readText(`/proc/${pid}/cmdline`, ARGS_MAX) ?? "";
  return new TextDecoder().decode(Uint8Array.from(text, (c) => c.charCodeAt(0))).split("\0");
};

/**
 * The processes that may be QEMUs: a running one whose name (comm), program (exe: a QEMU behind a link of another
 * name, Proxmox's kvm), or first arguments (a loader's program) say qemu. --pid decides whether each is one.
 */
function candidates(sys: Sys) {
  const { readdirSync, readlinkSync } = require("node:fs") as typeof import("node:fs");
  const named = (path: string | null) => /qemu/i.test(path?.split("/").at(-1) ?? "");
  const exe = (pid: number) => {
    try {
      return readlinkSync(`/proc/${pid}/exe`);
    } catch {
      return null;
    }
  };
  return readdirSync("/proc")
    .filter((entry) => /^\d+$/.test(entry) && Number(entry) !== process.pid)
    .map(Number)
    .filter((pid) => {
      const comm = sys.readText(`/proc/${pid}/comm`, 64)?.trim() ?? "";
      const found = named(comm) || named(exe(pid)) || argsOf(sys, pid).slice(0, 8).some(named);
      return found && running(sys, pid);
    })
    .toSorted((a, b) => a - b);
}

/** A VM's name as its command line gives it (-name guest=NAME,... or -name NAME): libvirt's domain name. */
function nameOf(sys: Sys, pid: number) {
  const args = argsOf(sys, pid);
  const at = args.findIndex((a) => a === "-name" || a === "--name");
  const value = at >= 0 ? (args[at + 1] ?? "") : "";
  const guest = value.startsWith("guest=") ? value.slice(6) : value;
  const name = guest.replaceAll(",,", "\0").split(",")[0].replaceAll("\0", ",");
  return name ? S.shown(name.length > 60 ? `${name.slice(0, 60)}…` : name) : `pid ${pid}`;
}

/** What --pid's options that shape an answer say: the capabilities asked for, the guest's page size. */
const passed = (o: T.Options) => [
  ...(o.require.join() !== "postcopy-ram" ? ["--require", o.require.join(",")] : []),
  ...(o.targetPageSize !== 4096 ? ["--target-page-size", String(o.targetPageSize)] : []),
];

/** One process, answered as --pid answers it, within what is left of the run's bound. */
async function answered(sys: Sys, pid: number, opts: T.Options, bound: Bound): Promise<T.VmAnswer> {
  const base = { name: nameOf(sys, pid), pid, user: null, qemu: null };
  const unknown = (why: string): T.VmAnswer => ({ ...base, answer: "unknown", why });
  const left = (why: string): T.VmAnswer => ({ ...base, answer: "not a qemu", why });
  const time = bound.deadline - Date.now();
  if (bound.stopped) return unknown(`not answered: the run was stopped (${bound.stopped})`);
  if (time <= 0) return unknown(`not answered within --all's bound (${ALL_MS / 1000} s)`);
  let report: T.Report;
  try {
    // Its document says why it could not answer: what it says on stderr too is not repeated here.
    const argv = ["--pid", String(pid), "--json", ...passed(opts)];
    const { out } = await runInContext(argv, Math.min(EACH_MS, time), { capture: true, quiet: true });
    report = JSON.parse(out);
  } catch (e) {
    return running(sys, pid) ? unknown((e as Error).message) : left("gone since it was found");
  }
  // A process --pid found no QEMU (said so by the document, not by its words, which hold the process's name).
  if (report.notQemu) return left(report.error ?? "not a QEMU");
  if (!report.checks) return running(sys, pid) ? unknown(report.error ?? "no answer") : left("gone since it was found");
  const shown = report.context as { user?: string } | undefined;
  const who = { user: shown?.user ?? null, qemu: report.probe.qemu.replace(/^QEMU ?/, "") || null, report };
  // What the exit status stands for (--require's capabilities, postcopy-ram by default), as --pid's own.
  const ok = report.required.ok;
  if (ok === null) return { ...base, ...who, answer: "unknown", why: report.error };
  if (ok) return { ...base, ...who, answer: "supported" };
  const first = report.diagnosis.find((d) => d.blocks.some((cap) => report.required.capabilities.includes(cap)));
  const why = first ? `${first.cause}: ${first.summary}` : "no cause named";
  return { ...base, ...who, answer: "not supported", cause: first?.cause, why };
}
type Bound = { deadline: number; stopped: string | null };

/**
 * Every QEMU on this host, each answered as --pid answers it: AT_ONCE at a time, each within EACH_MS, all within
 * ALL_MS from the start of the search. A signal (SIGTERM, SIGINT, SIGHUP) stops it: the children running then get it
 * too, and what is left is unanswered, said so.
 */
export async function everyVm(sys: Sys, opts: T.Options): Promise<T.VmAnswer[]> {
  if (process.getuid!() !== 0) throw new S.UsageError(`--all needs root: this is uid ${process.getuid!()}`);
  const bound: Bound = { deadline: Date.now() + ALL_MS, stopped: null };
  const stop = (signal: NodeJS.Signals) => {
    bound.stopped = signal;
  };
  const signals = ["SIGINT", "SIGTERM", "SIGHUP"] as const;
  for (const s of signals) process.on(s, stop);
  try {
    const pids = candidates(sys);
    const vms: T.VmAnswer[] = new Array(pids.length);
    let next = 0;
    const worker = async () => {
      while (next < pids.length) {
        const i = next++;
        vms[i] = await answered(sys, pids[i], opts, bound);
      }
    };
    await Promise.all(Array.from({ length: AT_ONCE }, worker));
    return vms;
  } finally {
    for (const s of signals) process.off(s, stop);
  }
}

/** --all's exit status: 1 when a VM cannot (a known no wins), 2 when one could not be answered, else 0; the host's
 * own status when no QEMU runs here. */
export function exitStatus(report: T.Report) {
  const vms = (report.vms ?? []).filter((v) => v.answer !== "not a qemu");
  if (vms.some((v) => v.answer === "not supported")) return 1;
  if (vms.some((v) => v.answer === "unknown")) return 2;
  if (vms.length) return 0;
  return report.error ? 2 : report.required.ok ? 0 : 1;
}

const WORDS = { supported: "SUPPORTED", "not supported": "NOT SUPPORTED", unknown: "UNKNOWN", "not a qemu": "" };
/** --all's human report: one line per VM, the count, then the host's own answer. */
export function renderVms(report: T.Report, hostLine: string) {
  const vms = report.vms ?? [];
  const qemus = vms.filter((v) => v.answer !== "not a qemu");
  const { host } = report;
  const row = (cells: string[]) =>
    cells
      .map((c, i) => c.padEnd([30, 9, 20, 10][i] ?? 0))
      .join(" ")
      .trimEnd();
  const user = (v: T.VmAnswer) => (v.user === null ? "?" : v.user);
  const lines = [
    `postcopy-probe ${report.version}: Linux ${host.kernel} ${host.arch}: every QEMU running here (--all)`,
    ...(qemus.length ? [row(["VM", "PID", "USER", "QEMU", "POSTCOPY"])] : []),
    ...qemus.map((v) =>
      row([v.name, String(v.pid), user(v), v.qemu ?? "?", `${WORDS[v.answer]}${v.why ? `: ${S.shown(v.why)}` : ""}`]),
    ),
  ];
  const count = (a: T.VmAnswer["answer"]) => `${qemus.filter((v) => v.answer === a).length} ${WORDS[a]}`;
  const counts = ["supported", "not supported", "unknown"] as const;
  const others = vms.filter((v) => v.answer === "not a qemu").map((v) => `${v.name} (${S.shown(v.why ?? "")})`);
  const aside = others.length ? `; not QEMUs: ${others.join("; ")}` : "";
  const total = `${qemus.length} QEMU${qemus.length === 1 ? "" : "s"}: ${counts.map(count).join(", ")}`;
  lines.push(qemus.length ? `${total}${aside}` : `No QEMU is running here${aside}`);
  return `${[...lines, `This host, for a QEMU started here: ${hostLine}`].join("\n")}\n`;
}
