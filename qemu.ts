/**
 * What talks to or about QEMU: where the QEMU that will run is, its version (read from the binary
 * without running it), whether it carries cap_sys_ptrace, `--qemu`'s question over QMP, and the
 * context QEMU runs in — `--user`'s user, or `--pid`'s running QEMU with its ids, cgroups, /dev,
 * seccomp filter, label and its VM's configuration. probe.ts loads this module only when it must know
 * its QEMU or such an option is given, so a default run does not pay for it.
 *
 * ```ts
 * import { identify } from "./qemu.ts";
 * const qemu = identify(sys, facts, opts); // { path, version, major, ptrace } or { error }
 * ```
 */
import type { Sys } from "./ffi.ts";
import * as K from "./ffi.ts";
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
const ARGS = "-machine none -nodefaults -no-user-config -display none -incoming defer -qmp stdio".split(" ");
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
function find(sys: Sys, given: string | true | null) {
  if (typeof given === "string") return given;
  const name = `qemu-system-${K.arch!.name}`;
  return Bun.which(name, { PATH: process.env.PATH ?? "" }) ?? QEMU_PLACES.find((q) => sys.stat(q).ret === 0) ?? null;
}

/** Whether the binary's file capabilities give CAP_SYS_PTRACE (permitted and effective) to whoever runs it. */
export function fileCapPtrace(sys: Sys, path: string) {
  const cap = sys.xattr(path, "security.capability");
  if (!cap || cap.length < 8) return false;
  const view = new DataView(cap.buffer, cap.byteOffset, cap.byteLength);
  return (
    (view.getUint32(0, true) & VFS_CAP_FLAGS_EFFECTIVE) !== 0 && ((view.getUint32(4, true) >> CAP_SYS_PTRACE) & 1) === 1
  );
}

/** "QEMU emulator version X.Y.Z" from the binary itself, read in chunks; a script (#!) is run with --version. */
export function versionOf(path: string, timeoutMs: number): string | null {
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
    const options = { timeout: timeoutMs, killSignal: "SIGKILL", maxBuffer: OUTPUT_MAX } as const;
    const run = Bun.spawnSync([path, "--version"], options);
    const m = run.stdout?.toString().match(VERSION_RE);
    return m ? `${m[1]}.${m[2]}.${m[3]}` : null;
  } catch {
    return null;
  }
}

/** The QEMU that will run, found and read: its path, version and file capability; with --qemu, its own answer. */
export function identify(sys: Sys, facts: Facts, opts: Options): Qemu {
  const path = find(sys, opts.qemu);
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
/** QEMU's answer beside the probe's; `probeSays` is null when the probe could not judge postcopy-ram. */
export function checkQemu(qemu: Qemu | null, probeSays: boolean | null): Check {
  const head = { id: "qemu", title: "QEMU's own answer (migrate-set-capabilities)" };
  const answer = qemu?.answer;
  if (!answer) return { ...head, status: "fail", detail: qemu?.error ?? "no QEMU found" };
  const verb = answer.accepts ? "accepts postcopy-ram" : `rejects postcopy-ram: ${answer.message}`;
  const told = `QEMU ${answer.version} ${verb}`;
  if (probeSays === null)
    return { ...head, status: answer.accepts ? "pass" : "fail", detail: `${told}, which the probe could not judge` };
  answer.agrees = answer.accepts === probeSays;
  if (!answer.agrees) answer.why = "the reason is not known to the probe: QEMU's answer decides";
  const differ = `THE PROBE SAID ${probeSays ? "YES" : "NO"}: ${answer.why}`;
  const detail = answer.agrees ? `${told}, as the probe says` : `${told}; ${differ}`;
  return { ...head, status: answer.accepts && answer.agrees ? "pass" : "fail", detail };
}

// ── Context: the user and the process QEMU really runs as (--user, --pid) ──

/** Tells the child which process started it: the parent's pid, which must be its getppid(). */
const CHILD = "POSTCOPY_PROBE_PARENT";
const MAX_ID = 4294967294; // (uid_t)-1 means "no change", not an id
/** A wrong --user or --pid: exit 2 with the message and the usage line, as probe.ts's UsageError. */
const usage = (message: string) => Object.assign(new Error(message), { name: "UsageError" });
const quoted = (arg: string) => JSON.stringify(arg.length > 60 ? `${arg.slice(0, 60)}…` : arg);
const rows = (sys: Sys, path: string) => (sys.readText(path) ?? "").split("\n").map((l) => l.split(":"));
const field = (text: string | null, key: string) => text?.match(new RegExp(`^${key}:\\s*(.*)$`, "m"))?.[1] ?? null;
const id = (v = "") => (/^\d{1,10}$/.test(v) && Number(v) <= MAX_ID ? Number(v) : null);

/** Who the probe answers for, and, for --pid, what it learnt of that process (read as root, before the switch). */
export type Context = {
  name: string;
  uid: number;
  gid: number;
  groups: number[];
  process?: ReturnType<typeof processFacts>;
  /** /dev/userfaultfd as that process sees it: through its own root, opened before the switch. */
  device?: string;
  qemu?: Qemu;
  checks?: Check[];
  /** What the VM's memory needs of the host, beyond postcopy-ram. */
  needs?: Array<"postcopy-hugetlbfs" | "postcopy-shmem">;
  /** CAP_SYS_PTRACE kept for QEMU's sake (its file capability, or the process's): not CRIU's or Firecracker's. */
  ptrace?: boolean;
};

/** The context asked for: --user NAME|UID from /etc/passwd and /etc/group, --pid PID from /proc; else usage errors. */
export function contextOf(sys: Sys, opts: Options): Context {
  if (process.getuid!() !== 0)
    throw usage(`--${opts.pid !== null ? "pid" : "user"} needs root: this is uid ${process.getuid!()}`);
  if (opts.pid !== null) return pidContext(sys, opts.pid);
  const who = opts.user!;
  if (!who) throw usage(`Invalid user "": give a name or a uid`);
  const entry = rows(sys, "/etc/passwd").find((r) => r.length > 3 && (r[0] === who || r[2] === who));
  if (!entry) throw usage(`Unknown user ${quoted(who)}: not in /etc/passwd`);
  const [name, uid, gid] = [entry[0], id(entry[2]), id(entry[3])];
  if (uid === null || gid === null) throw usage(`User ${quoted(who)} has no sound uid and gid in /etc/passwd`);
  const groups = rows(sys, "/etc/group").filter((g) => g[3]?.split(",").includes(name) && id(g[2]) !== null);
  return { name, uid, gid, groups: [gid, ...groups.map((g) => id(g[2])!)] };
}

/** Whether this process is the child a parent probe started (a variable set by hand changes nothing). */
export const isChild = (sys: Sys) => String(sys.getppid()) === process.env[CHILD];
/** A child whose parent went before the child could tell: the variable names a process that is gone or dead. */
export function isOrphan(sys: Sys) {
  const parent = process.env[CHILD] ?? "";
  if (!/^\d+$/.test(parent) || isChild(sys)) return false;
  const stat = sys.readText(`/proc/${parent}/stat`);
  return stat === null || /^\d+ \(.*\) [ZX] /s.test(stat);
}

/** The whole probe again in a child that takes on the context first; signals go on to it; its status is the answer. */
export async function runInContext(argv: string[]) {
  // A compiled binary is its own script; `bun probe.ts` needs the script named.
  const self = Bun.main.startsWith("/$bunfs/") ? [process.execPath] : [process.execPath, Bun.main];
  const env = { ...process.env, [CHILD]: String(process.pid) };
  const child = Bun.spawn([...self, ...argv], { env, stdio: ["inherit", "inherit", "inherit"] });
  for (const signal of ["SIGINT", "SIGTERM", "SIGHUP"] as const) process.on(signal, () => child.kill(signal));
  await child.exited;
  return child.exitCode ?? 2;
}

/**
 * In the child: read the process (as root), open its root and join its cgroups (so its device cgroup
 * rules apply to the probe as to QEMU; the membership ends with the child), then become its user and
 * die with the parent. Throws when the kernel refuses any step.
 */
export function enterContext(sys: Sys, opts: Options): Context {
  const context = contextOf(sys, opts);
  const pid = opts.pid;
  if (pid !== null) {
    const root = sys.open(`/proc/${pid}/root`, K.O_PATH | K.O_CLOEXEC);
    if (root.ret < 0) throw new Error(`Cannot open /proc/${pid}/root: ${K.errnoName(root.errno)}`);
    context.device = `/proc/self/fd/${root.ret}/dev/userfaultfd`;
    for (const dir of cgroupDirs(sys, pid)) joinCgroup(sys, dir);
  }
  // QEMU's own CAP_SYS_PTRACE (its binary's file capability) comes along: the syscall's gate is then QEMU's.
  const exe = pid === null ? find(sys, opts.qemu) : null;
  const capEff = context.process?.capEff ?? "";
  const ptrace = exe
    ? fileCapPtrace(sys, exe)
    : /^[0-9a-f]+$/i.test(capEff) && ((BigInt(`0x${capEff}`) >> 19n) & 1n) === 1n;
  context.ptrace = ptrace && context.uid !== 0;
  const r = sys.become(context.uid, context.gid, context.groups, ptrace);
  if (r.ret < 0) throw new Error(`Cannot become ${context.name} (uid ${context.uid}): ${K.errnoName(r.errno)}`);
  // Set after the ids change (which clears it), then checked: the parent may have gone in between.
  sys.prctl(K.PR_SET_PDEATHSIG, K.SIGKILL);
  if (!isChild(sys)) throw new Error("The parent probe is gone");
  return context;
}

/** The cgroup directories of `pid` that decide device access: the v1 devices controller's, and the v2 one. */
function cgroupDirs(sys: Sys, pid: number) {
  const mounts = sys.readText("/proc/self/mountinfo") ?? "";
  const mountOf = (v1: boolean) =>
    mounts.match(
      v1 ? /^\S+ \S+ \S+ \S+ (\S+) .* - cgroup \S+ \S*\bdevices\b/m : /^\S+ \S+ \S+ \S+ (\S+) .* - cgroup2 /m,
    )?.[1];
  return (sys.readText(`/proc/${pid}/cgroup`) ?? "").split("\n").flatMap((line) => {
    const [, controllers, path] = line.match(/^\d+:([^:]*):(.*)$/) ?? [];
    const mount =
      controllers === "" ? mountOf(false) : controllers?.split(",").includes("devices") ? mountOf(true) : undefined;
    return mount ? [`${mount}${path === "/" ? "" : path}`] : [];
  });
}
/** Moves this process into the cgroup at `dir`; throws when the kernel refuses. */
function joinCgroup(sys: Sys, dir: string) {
  const fd = sys.open(`${dir}/cgroup.procs`, K.O_WRONLY | K.O_CLOEXEC);
  const r = fd.ret < 0 ? fd : sys.write(fd.ret, String(process.pid));
  if (fd.ret >= 0) sys.close(fd.ret);
  if (r.ret < 0) throw new Error(`Cannot join the cgroup ${dir}: ${K.errnoName(r.errno)}`);
}

/** What /proc tells of a running process, read without stopping or tracing it. */
function processFacts(sys: Sys, pid: number) {
  const at = `/proc/${pid}`;
  const status = sys.readText(`${at}/status`);
  const fs = require("node:fs") as typeof import("node:fs");
  const link = (path: string) => {
    try {
      return fs.readlinkSync(path);
    } catch {
      return null;
    }
  };
  const num = (key: string) => (field(status, key)?.match(/^\d+/) ? Number.parseInt(field(status, key)!, 10) : null);
  return {
    pid,
    comm: sys.readText(`${at}/comm`)?.trim() ?? null,
    exe: link(`${at}/exe`),
    uids: field(status, "Uid")?.split(/\s+/).map(Number) ?? [],
    gids: field(status, "Gid")?.split(/\s+/).map(Number) ?? [],
    groups: (field(status, "Groups") ?? "").split(/\s+/).filter(Boolean).map(Number),
    capEff: field(status, "CapEff"),
    noNewPrivs: num("NoNewPrivs") === 1,
    seccomp: num("Seccomp"),
    seccompFilters: num("Seccomp_filters"),
    uidMap: sys.readText(`${at}/uid_map`)?.trim().split("\n")[0].trim().replace(/\s+/g, " ") ?? null,
    ownMountNamespace: link(`${at}/ns/mnt`) !== link("/proc/self/ns/mnt"),
    cgroups: (sys.readText(`${at}/cgroup`) ?? "").trim().split("\n"),
    label: sys.readText(`${at}/attr/current`)?.replace(/\0/g, "").trim() || null,
    // QEMU calls munlockall() before postcopy: memory locked now is not a blocker.
    vmLckKb: num("VmLck"),
    cmdline: (sys.readText(`${at}/cmdline`) ?? "").split("\0").slice(0, -1),
  };
}

/** --pid PID: the process's own ids (effective), its facts, its QEMU, and its VM's configuration checks. */
function pidContext(sys: Sys, pid: number): Context {
  const facts = processFacts(sys, pid);
  const [uid, gid] = [facts.uids[1], facts.gids[1]];
  if (uid === undefined || gid === undefined) throw usage(`No process ${pid}: /proc/${pid} is gone or unreadable`);
  const name = rows(sys, "/etc/passwd").find((r) => r[2] === String(uid))?.[0] ?? String(uid);
  // A QEMU started through its dynamic loader (a QEMU in a tree of its own) runs the program the loader was given.
  const loaded = /\/ld-[^/]*$/.test(facts.exe ?? "")
    ? facts.cmdline.find((a) => /qemu/.test(a.split("/").at(-1)!))
    : null;
  const exe = loaded ? `/proc/${pid}/root${loaded}` : `/proc/${pid}/exe`;
  const version = /qemu/i.test(loaded ?? facts.exe ?? "") ? versionOf(exe, 5000) : null;
  const qemu: Qemu = version
    ? { path: loaded ?? facts.exe, version, major: Number(version.split(".")[0]), ptrace: fileCapPtrace(sys, exe) }
    : { path: facts.exe, version: null, ptrace: false, error: `${facts.exe}: not a QEMU the probe could read` };
  const vm = version ? configChecks(facts, `/proc/${pid}/root`) : { checks: [], needs: [] };
  return {
    name,
    uid,
    gid,
    groups: [gid, ...facts.groups.filter((g) => g !== gid)],
    process: facts,
    qemu,
    ...vm,
    checks: [contextCheck(facts, qemu, name), ...vm.checks],
  };
}

/** What the child cannot take on of the process (its seccomp filter, label, namespaces), with its known effect. */
function contextCheck(f: ReturnType<typeof processFacts>, qemu: Qemu, name: string): Check {
  const head = { id: "context", title: "the running process's own context (--pid)", vm: true };
  const sandbox = f.cmdline.some((a, i) => f.cmdline[i - 1] === "-sandbox" && /^on\b/.test(a));
  const what = [
    `${f.comm}[${f.pid}] runs as ${name} (uid ${f.uids[1]})${qemu.version ? `, QEMU ${qemu.version}` : ""}`,
    f.ownMountNamespace ? "a mount namespace of its own" : "the host's mount namespace",
    `cgroup ${f.cgroups.find((c) => c.startsWith("0::"))?.slice(3) ?? f.cgroups[0]?.split(":")[2]}`,
    ...(f.label ? [`label ${f.label}`] : []),
  ].join(", ");
  if (f.seccomp !== 2) return { ...head, status: "pass", detail: what };
  // Measured with QEMU 7.2: postcopy-ram accepted as root under libvirt's -sandbox on,obsolete=deny,... filter.
  if (sandbox && f.seccompFilters === 1)
    return { ...head, status: "pass", detail: `${what}; QEMU's own -sandbox filter does not deny userfaultfd` };
  const effect = "if one denies userfaultfd(2), QEMU before 8.0 fails";
  const unknown = `${f.seccompFilters} seccomp filter(s) the probe cannot take on: ${effect}`;
  return { ...head, status: "warn", detail: `${what}; ${unknown}`, unknownFilter: true };
}

/** A QEMU option's value as properties: the JSON form libvirt uses, or QEMU's key=value list (",," is a comma). */
type Props = Record<string, unknown>;
function optionValue(value: string, first: string): Props {
  if (value.startsWith("{")) {
    try {
      const parsed = JSON.parse(value);
      return parsed && typeof parsed === "object" ? parsed : {};
    } catch {
      return {};
    }
  }
  const parts = value
    .replaceAll(",,", "\0")
    .split(",")
    .map((p) => p.replaceAll("\0", ","));
  return Object.fromEntries(
    parts.map((p, i) => (p.includes("=") ? p.split(/=(.*)/s).slice(0, 2) : i === 0 ? [first, p] : [p, "on"])),
  );
}
const on = (v: unknown) => ["on", "true", "yes", true].includes(v as string);
/** Filesystem magic numbers (linux/magic.h) QEMU 8.1+ accepts for postcopy file-backed RAM. */
const [TMPFS_MAGIC, HUGETLBFS_MAGIC] = [0x01021994, 0x958458f6];

/**
 * The VM's configuration, from its command line: memory backends (file-backed RAM must be on tmpfs or
 * hugetlbfs; shared memory needs MISSING_SHMEM, huge pages MISSING_HUGETLBFS) and devices that block
 * or endanger postcopy, each with QEMU's own message.
 */
export function configChecks(f: Pick<ReturnType<typeof processFacts>, "cmdline" | "vmLckKb">, root: string) {
  const args = f.cmdline;
  const values = (opt: string, first: string) =>
    args.flatMap((a, i) => (args[i - 1] === opt ? [optionValue(a, first)] : []));
  const backends = values("-object", "qom-type").filter((o) => String(o["qom-type"]).startsWith("memory-backend"));
  const memPaths = [
    ...backends.map((b) => b["mem-path"]),
    ...args.filter((_, i) => args[i - 1] === "-mem-path"),
  ].filter(Boolean);
  const fs = require("node:fs") as typeof import("node:fs");
  const fsOf = (path: unknown) => {
    try {
      return fs.statfsSync(`${root}${path}`).type;
    } catch {
      return null;
    }
  };
  const memory: string[] = [];
  let status: Check["status"] = "pass";
  const needs = new Set<"postcopy-hugetlbfs" | "postcopy-shmem">();
  for (const path of memPaths) {
    const type = fsOf(path);
    if (type === HUGETLBFS_MAGIC) needs.add("postcopy-hugetlbfs");
    else if (type === TMPFS_MAGIC) needs.add("postcopy-shmem");
    else {
      status = "fail";
      const on =
        type === null ? "on a filesystem the probe could not read" : `on a filesystem of type 0x${type.toString(16)}`;
      memory.push(`mem-path ${path} is ${on}: ${NOT_TMPFS}`);
    }
  }
  if (backends.some((b) => b["qom-type"] === "memory-backend-memfd" || on(b.share))) needs.add("postcopy-shmem");
  const kind = needs.has("postcopy-shmem") ? "shared memory (memfd or share=on)" : "anonymous RAM";
  if (memory.length === 0)
    memory.push(memPaths.length ? `file-backed RAM on tmpfs or hugetlbfs: ${memPaths.join(", ")}` : kind);
  // postcopy_ram_supported_by_host() calls munlockall(); QEMU locks the memory again once postcopy ends.
  const locks = [...values("-overcommit", "mem-lock"), ...values("-realtime", "mlock")];
  if (f.vmLckKb || locks.some((o) => on(o["mem-lock"]) || on(o.mlock)))
    memory.push(
      `memory locked (VmLck ${f.vmLckKb ?? "unknown"} kB): QEMU unlocks it for postcopy, then locks it again`,
    );
  const hint = "give the memory backend a mem-path on tmpfs (/dev/shm) or hugetlbfs (/dev/hugepages)";
  const mem: Check = {
    id: "vm-memory",
    title: "this VM's memory backends",
    status,
    detail: memory.join("; "),
    vm: true,
    hint,
  };
  const devices = devicesCheck(values("-device", "driver"), values("-netdev", "type"), values("-chardev", "backend"));
  return { checks: [mem, devices], needs: [...needs] };
}

const NOT_TMPFS =
  '"Host backend files need to be TMPFS or HUGETLBFS only" ' +
  "(QEMU 8.1+ refuses; before 8.1 postcopy starts, then fails)";

/** Devices that refuse or endanger postcopy, as QEMU says it (and as measured where QEMU accepts). */
function devicesCheck(devices: Props[], netdevs: Props[], chardevs: Props[]): Check {
  const drivers = devices.map((d) => String(d.driver));
  /** A vhost-user device or netdev, named with its backend's socket (the chardev it refers to). */
  const named = (what: string, o: Props) => {
    const socket = chardevs.find((c) => c.id === o.chardev)?.path;
    return socket ? `${what} (socket ${socket})` : what;
  };
  const found: Array<[Check["status"], string]> = [];
  if (drivers.some((d) => d.startsWith("vfio")))
    found.push([
      "fail",
      `vfio: "VFIO migration is not supported with postcopy migration" (QEMU 8.2+; before, VFIO blocks migration)`,
    ]);
  const vhostUser = [
    ...devices.filter((d) => String(d.driver).startsWith("vhost-user")).map((d) => named(String(d.driver), d)),
    ...netdevs.filter((n) => n.type === "vhost-user").map((n) => named(`netdev ${n.id}`, n)),
  ];
  const refused = '"vhost-user backend not capable of postcopy"';
  if (vhostUser.length)
    found.push([
      "warn",
      `${vhostUser.join(", ")}: the backend must offer VHOST_USER_PROTOCOL_F_PAGEFAULT, else ${refused}`,
    ]);
  if (devices.some((d) => String(d.driver).startsWith("virtio-balloon") && on(d["free-page-hint"])))
    found.push([
      "warn",
      "virtio-balloon free-page-hint: QEMU 7.2 and 10 accept postcopy with it; hinted pages and postcopy do not mix",
    ]);
  const status = found.some(([s]) => s === "fail") ? "fail" : found.length ? "warn" : "pass";
  const detail = found.length
    ? found.map(([, d]) => d).join("; ")
    : `devices: ${drivers.length}, none that refuses postcopy`;
  const hint = "detach the VFIO device before a postcopy migration, or migrate it without postcopy";
  return { id: "vm-devices", title: "this VM's devices", status, detail, vm: true, hint };
}
