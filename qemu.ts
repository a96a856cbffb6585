/**
 * What talks to or about a QEMU binary: where the QEMU that will run is, its version (read from the
 * binary without running it), whether it carries cap_sys_ptrace, and `--qemu`'s question over QMP.
 * probe.ts loads this module only when it must know its QEMU, so a default run does not pay for it.
 *
 * ```ts
 * import { identify } from "./qemu.ts";
 * const qemu = identify(sys, facts, opts); // { path, version, major, ptrace } or { error }
 * ```
 */
import type { Sys } from "./ffi.ts";
import type { Check, Facts, Options } from "./probe.ts";

/** QEMU's own answer to migrate-set-capabilities postcopy-ram, and whether (and why not) it agrees with the probe. */
export type QemuAnswer = {
  path: string;
  version: string;
  accepts: boolean;
  message: string;
  agrees?: boolean;
  why?: string;
};
/** The QEMU that will run, as far as the probe could tell; `error` says what it could not. */
export type Qemu = {
  path: string | null;
  version: string | null;
  major?: number;
  ptrace: boolean;
  answer?: QemuAnswer;
  error?: string;
};

/** Where QEMU is looked for when --qemu names none: qemu-system-ARCH on $PATH, then these. */
const QEMU_PLACES = ["/usr/libexec/qemu-kvm", "/usr/bin/qemu-kvm"];
const QMP = [
  { execute: "qmp_capabilities" },
  { execute: "migrate-set-capabilities", arguments: { capabilities: [{ capability: "postcopy-ram", state: true }] } },
  { execute: "quit" },
]
  .map((c) => `${JSON.stringify(c)}\n`)
  .join("");
const ARGS = [
  "-machine",
  "none",
  "-nodefaults",
  "-no-user-config",
  "-display",
  "none",
  "-incoming",
  "defer",
  "-qmp",
  "stdio",
];
/** A QMP exchange is a few hundred bytes: more than this without an answer is not QEMU talking. */
const OUTPUT_MAX = 1 << 16;
const VERSION_RE = /QEMU emulator version (\d+)\.(\d+)\.(\d+)/;
/** linux/capability.h: vfs_cap_data's magic_etc flag, and the bit of CAP_SYS_PTRACE in its permitted mask. */
const [VFS_CAP_FLAGS_EFFECTIVE, CAP_SYS_PTRACE] = [1, 19];

/** Text from a child, made safe for a one-line report: no control characters, at most 200 characters. */
export const sanitize = (text: string) => {
  const flat = text.replace(/\p{Cc}+/gu, " ").trim();
  return flat.length > 200 ? `${flat.slice(0, 200)}…` : flat;
};
const latin1 = new TextDecoder("latin1");

/** The QEMU that will run: --qemu's PATH, else qemu-system-ARCH on $PATH, else a distribution's place. */
function find(sys: Sys, facts: Facts, given: string | true | null) {
  if (typeof given === "string") return given;
  const name = `qemu-system-${facts.arch}`;
  return Bun.which(name, { PATH: process.env.PATH ?? "" }) ?? QEMU_PLACES.find((q) => sys.stat(q).ret === 0) ?? null;
}

/** Whether the binary's file capabilities give CAP_SYS_PTRACE (permitted and effective) to whoever runs it. */
function fileCapPtrace(sys: Sys, path: string) {
  const cap = sys.xattr(path, "security.capability");
  if (!cap || cap.length < 8) return false;
  const view = new DataView(cap.buffer, cap.byteOffset, cap.byteLength);
  return (
    (view.getUint32(0, true) & VFS_CAP_FLAGS_EFFECTIVE) !== 0 && ((view.getUint32(4, true) >> CAP_SYS_PTRACE) & 1) === 1
  );
}

/** "QEMU emulator version X.Y.Z" from the binary itself, read in chunks; a script (#!) is run with --version instead. */
function versionOf(path: string, timeoutMs: number): string | null {
  const fs = require("node:fs") as typeof import("node:fs");
  let fd = -1;
  try {
    fd = fs.openSync(path, "r");
    const chunk = new Uint8Array(1 << 20);
    let tail = "";
    for (let at = 0, n = 1; n > 0; at += n) {
      n = fs.readSync(fd, chunk, 0, chunk.length, at);
      const text = tail + latin1.decode(chunk.subarray(0, n));
      if (at === 0 && text.startsWith("#!")) return versionByRunning(path, timeoutMs);
      const m = text.match(VERSION_RE);
      if (m) return `${m[1]}.${m[2]}.${m[3]}`;
      tail = text.slice(-64); // the string may straddle two chunks
    }
    return null;
  } catch {
    return null;
  } finally {
    if (fd >= 0) fs.closeSync(fd);
  }
}
function versionByRunning(path: string, timeoutMs: number) {
  try {
    const run = Bun.spawnSync([path, "--version"], {
      timeout: timeoutMs,
      killSignal: "SIGKILL",
      maxBuffer: OUTPUT_MAX,
    });
    const m = run.stdout?.toString().match(VERSION_RE);
    return m ? `${m[1]}.${m[2]}.${m[3]}` : null;
  } catch {
    return null;
  }
}

/** The QEMU that will run, found and read: its path, version and file capability; with --qemu, its own answer. */
export function identify(sys: Sys, facts: Facts, opts: Options): Qemu {
  const path = find(sys, facts, opts.qemu);
  const looked = `qemu-system-${facts.arch} on $PATH, ${QEMU_PLACES.join(", ")}`;
  if (!path) return { path: null, version: null, ptrace: false, error: `no QEMU found: looked for ${looked}` };
  const ptrace = fileCapPtrace(sys, path);
  const asked = opts.qemu === null ? null : askQemu(sys, path, opts.qemuMs);
  const answer = typeof asked === "string" ? undefined : (asked ?? undefined);
  const version = answer?.version ?? versionOf(path, opts.qemuMs);
  const error =
    typeof asked === "string" ? `${path}: ${asked}` : version ? undefined : `${path}: no version could be read`;
  return { path, version, major: version ? Number(version.split(".")[0]) : undefined, ptrace, answer, error };
}

/** The JSON objects among a child's output lines; anything else is left out. */
function objects(lines: string[]) {
  return lines.flatMap((line) => {
    try {
      const value = JSON.parse(line);
      return value && typeof value === "object" && !Array.isArray(value) ? [value as Record<string, unknown>] : [];
    } catch {
      return [];
    }
  });
}
/** `{"QMP": {"version": {"qemu": {"major": 7, ...}}}}` as "7.2.0", or null for anything else. */
function greetingVersion(replies: Record<string, unknown>[]) {
  const v = (replies.find((r) => "QMP" in r)?.QMP as { version?: { qemu?: Record<string, unknown> } } | undefined)
    ?.version?.qemu;
  const parts = [v?.major, v?.minor, v?.micro];
  return parts.every((n) => Number.isInteger(n)) ? parts.join(".") : null;
}

/**
 * QEMU's own answer: an incoming VM with no guest, no disk and no network, asked over QMP on stdio to
 * turn postcopy-ram on, as `migrate-set-capabilities` does before a migration. The child runs in a
 * process group of its own, killed whole when the exchange is complete or the time is up; at most
 * OUTPUT_MAX bytes of its output are read, whatever it prints.
 */
export function askQemu(sys: Sys, path: string, timeoutMs: number): QemuAnswer | string {
  const pipes = [sys.pipe(), sys.pipe(), sys.pipe()]; // stdin, stdout, stderr
  const [input, out, err] = pipes.map((p) => p.ends);
  // Each end is closed once: a number closed twice could be someone else's fd by then.
  const owned = new Set(pipes.flatMap((p) => p.ends).filter((fd) => fd >= 0));
  const close = (...fds: number[]) => {
    for (const fd of fds) if (owned.delete(fd)) sys.close(fd);
  };
  let child: ReturnType<typeof Bun.spawn> | null = null;
  const text = ["", ""]; // what QEMU printed on stdout, and on stderr
  try {
    if (pipes.some((p) => p.ret < 0)) return "could not make a pipe";
    sys.write(input[1], QMP); // a few hundred bytes: the pipe holds them until QEMU reads
    try {
      child = Bun.spawn([path, ...ARGS], { stdio: [input[0], out[1], err[1]], detached: true });
    } catch (e) {
      return sanitize((e as Error).message);
    }
    close(input[0], input[1], out[1], err[1]); // QEMU has its own copies: EOF comes when they go
    const chunk = new Uint8Array(4096);
    const open = [true, true]; // stdout, stderr: until every writer closed them
    const take = (i: number) => {
      const n = sys.read([out[0], err[0]][i], chunk).ret;
      if (n > 0) text[i] += latin1.decode(chunk.subarray(0, n));
      else open[i] = false;
    };
    const deadline = Date.now() + timeoutMs;
    // The exchange is complete with the third reply (quit's): a grandchild holding the pipe open does not matter.
    while (open[0] && replies(text[0]).length < 3) {
      if (Date.now() > deadline) return `no answer within ${timeoutMs} ms: killed`;
      const { revents } = sys.poll(out[0], 50, open[1] ? err[0] : -1);
      for (const i of [0, 1]) if (revents[i] && open[i]) take(i);
      if (text[0].length + text[1].length > OUTPUT_MAX)
        return `more than ${OUTPUT_MAX} bytes of output and no QMP answer: killed`;
    }
    // What stderr already holds is read too (QEMU 7.2 says why there), without waiting for more.
    while (open[1] && text[1].length < OUTPUT_MAX && sys.poll(err[0], 0).ret > 0) take(1);
  } finally {
    close(...owned);
    try {
      if (child) process.kill(-child.pid, "SIGKILL"); // the whole group: a script's own children too
    } catch {
      // already gone
    }
  }
  const version = greetingVersion(objects(text[0].split("\n")));
  const answer = replies(text[0])[1];
  const said = sanitize(
    [...text[1].split("\n"), ...text[0].split("\n")].find((l) => l.trim() && !objects([l]).length) ?? "",
  );
  if (!version) return `no QMP greeting with a version${said ? `: ${said}` : ""}`;
  if (!answer) return `no QMP answer to migrate-set-capabilities${said ? `: ${said}` : ""}`;
  // QEMU before 8.1 says why on stderr ("postcopy_ram_supported_by_host: userfaultfd not available: ...").
  const why = text[1]
    .split("\n")
    .filter((l) => /postcopy|userfault/i.test(l))
    .map(sanitize);
  const error = answer.error as { desc?: unknown } | undefined;
  const message = error ? [sanitize(String(error.desc ?? "an error")), ...why].join(": ") : "";
  return { path, version, accepts: !error, message };
}
/** QMP's replies (objects with `return` or `error`) among the lines of `text`. */
const replies = (text: string) => objects(text.split("\n")).filter((r) => "return" in r || "error" in r);

/** The --qemu check: QEMU's answer beside the probe's own for that same QEMU version. */
export function checkQemu(qemu: Qemu | null, probeSays: boolean): Check {
  const head = { id: "qemu", title: "QEMU's own answer (migrate-set-capabilities)" };
  const answer = qemu?.answer;
  if (!answer) return { ...head, status: "fail", detail: qemu?.error ?? "no QEMU found" };
  answer.agrees = answer.accepts === probeSays;
  if (!answer.agrees) answer.why = "the reason is not known to the probe: QEMU's answer decides";
  const told = `QEMU ${answer.version} ${answer.accepts ? "accepts" : "rejects"} postcopy-ram${answer.accepts ? "" : `: ${answer.message}`}`;
  const differ = `THE PROBE SAID ${probeSays ? "YES" : "NO"}: ${answer.why}`;
  const detail = answer.agrees ? `${told}, as the probe says` : `${told}; ${differ}`;
  return { ...head, status: answer.accepts && answer.agrees ? "pass" : "fail", detail };
}
