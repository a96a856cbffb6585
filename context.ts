/**
 * Whose context the answer is for: `--user`'s user, or `--pid`'s running QEMU (read by pid.ts). The
 * parent probe starts the whole probe again in a child, which takes on that context (the privilege
 * switch, in one sequence: read the process as root, join its cgroups, become its user) before any
 * check runs. probe.ts loads this file only for --user and --pid.
 *
 * ```ts
 * import { contextOf, enterContext } from "./context.ts";
 * const context = enterContext(sys, opts); // in the child: { name, uid, gid, groups, checks?, ... }
 * ```
 */

import type { R, Sys } from "./ffi.ts";
import * as K from "./ffi.ts";
import { fileCapPtrace, find } from "./qemu.ts";
import {
  CAP_SYS_PTRACE,
  capBit,
  INITIAL_UID_MAP,
  quoted,
  rows,
  SELF_ENV,
  self,
  stdoutClosed,
  UsageError,
  within,
  workingDirectory,
} from "./shared.ts";
import type * as T from "./types.ts";

/** Tells the child which process started it: the parent's pid, which must be its getppid(). */
const CHILD = "POSTCOPY_PROBE_PARENT";
const MAX_ID = 4294967294; // (uid_t)-1 means "no change", not an id
const id = (v = "") => (/^\d{1,10}$/.test(v) && Number(v) <= MAX_ID ? Number(v) : null);
// include/uapi/linux/prctl.h, capability.h, asm-generic/signal.h
const [PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_CAPBSET_DROP, PR_SET_SECUREBITS] = [1, 4, 24, 28];
const [PR_SET_NO_NEW_PRIVS, PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE] = [38, 47, 2];
// include/uapi/linux/securebits.h
const [SECBIT_NOROOT, SECBIT_NOROOT_LOCKED, SECBIT_KEEP_CAPS] = [1, 2, 16];
const [_LINUX_CAPABILITY_VERSION_3, SIGKILL] = [0x20080522, 9];
const F = K.FFIType;
/** libc calls only --user and --pid make: the privilege switch. */
const calls = () =>
  K.openLibc({
    setgroups: { args: [F.u64, F.ptr], returns: F.i32 },
    setresgid: { args: [F.u32, F.u32, F.u32], returns: F.i32 },
    setresuid: { args: [F.u32, F.u32, F.u32], returns: F.i32 },
    capset: { args: [F.ptr, F.ptr], returns: F.i32 },
    prctl: { args: [F.i32, F.u64, F.u64, F.u64, F.u64], returns: F.i32 },
    getppid: { args: [], returns: F.i32 },
  });
let opened: ReturnType<typeof calls> | null = null;
/** This file's libc calls, opened on first use. */
const libc = () => (opened ??= calls());

/**
 * Sets groups, gid and uid (real, effective, saved), then the capabilities QEMU has: `all` (root in the
 * initial user namespace, as --user root), or exactly `caps` (a CapEff mask: the process's, CAP_SYS_PTRACE
 * alone as a binary with that file capability gets it, or none), raised into the ambient set too so that
 * a QEMU this process starts (--qemu, --migrate) has them as QEMU did. With `held` (--pid), nothing this process
 * starts may hold more than the process: the bounding set becomes its, and SECBIT_NOROOT (locked) keeps an exec as
 * root from regaining what it had not (root in a user namespace of its own, or one that dropped its capabilities).
 * The child stays not dumpable, so no process of that user can trace it or read its environment.
 */
function become(
  uid: number,
  gid: number,
  groups: number[],
  caps: bigint | "all",
  held: { bounding: bigint } | null,
): R {
  const c = libc();
  const set = K.answer(c.setgroups(groups.length, new Uint32Array(groups.length ? groups : [0])));
  const g = set.ret === -1 ? set : K.answer(c.setresgid(gid, gid, gid));
  if (g.ret === -1) return g;
  // Dropped while still root (EINVAL past the kernel's last capability is no error).
  for (const cap of held ? CAPS.filter((n) => !((held.bounding >> BigInt(n)) & 1n)) : [])
    c.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0);
  const keep = caps === "all" || caps === 0n ? 0 : SECBIT_KEEP_CAPS;
  const bits = K.answer(c.prctl(PR_SET_SECUREBITS, keep | (held ? SECBIT_NOROOT | SECBIT_NOROOT_LOCKED : 0), 0, 0, 0));
  const u = bits.ret === -1 ? bits : K.answer(c.setresuid(uid, uid, uid));
  if (u.ret === -1 || caps === "all") return u.ret === -1 ? u : K.answer(c.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0));
  // __user_cap_header_struct {version, pid}; two __user_cap_data_struct {effective, permitted, inheritable}.
  const [low, high] = [Number(caps & 0xffffffffn), Number(caps >> 32n)];
  const header = new Uint32Array([_LINUX_CAPABILITY_VERSION_3, 0]);
  const kept = K.answer(c.capset(header, new Uint32Array([low, low, low, high, high, high])));
  if (kept.ret === -1) return kept;
  for (const cap of CAPS.filter((n) => (caps >> BigInt(n)) & 1n))
    c.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, cap, 0, 0);
  return K.answer(c.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0));
}
/** Capability numbers, 0 to 63. */
const CAPS = Array.from({ length: 64 }, (_, n) => n);
/** A capability mask as /proc/PID/status shows it (CapEff, CapBnd), or 0 when it cannot be read. */
const mask = (hex: string | null) => (hex?.match(/^[0-9a-f]{1,16}$/i) ? BigInt(`0x${hex}`) : 0n);
export const getppid = () => libc().getppid();

/**
 * The context asked for: --user NAME|UID from /etc/passwd and /etc/group; --pid PID, in the parent,
 * only that the process is there (the child reads it whole). Usage errors otherwise.
 */
export function contextOf(sys: Sys, opts: T.Options): T.Context {
  if (process.getuid!() !== 0)
    throw new UsageError(`--${opts.pid !== null ? "pid" : "user"} needs root: this is uid ${process.getuid!()}`);
  if (opts.pid !== null) {
    loadPid().processed(sys, opts.pid);
    return { name: "", uid: 0, gid: 0, groups: [] };
  }
  const who = opts.user!;
  if (!who) throw new UsageError(`Invalid user "": give a name or a uid`);
  const entry = rows(sys, "/etc/passwd").find((r) => r.length > 3 && (r[0] === who || r[2] === who));
  if (!entry) throw new UsageError(`Unknown user ${quoted(who)}: not in /etc/passwd`);
  const [name, uid, gid] = [entry[0], id(entry[2]), id(entry[3])];
  if (uid === null || gid === null) throw new UsageError(`User ${quoted(who)} has no sound uid and gid in /etc/passwd`);
  const groups = rows(sys, "/etc/group").filter((g) => g[3]?.split(",").includes(name) && id(g[2]) !== null);
  return { name, uid, gid, groups: [gid, ...groups.map((g) => id(g[2])!)] };
}
/**
 * --user and --pid, in the parent: the child run in that context, its document and status; in the child:
 * the context, taken on. A child orphaned while it started must not start a child of its own: it ends here.
 */
export async function takeOn(
  sys: Sys,
  opts: T.Options,
  argv: string[],
): Promise<T.Context | { code: number; out: string }> {
  if (isOrphan(sys)) {
    opts.output = null; // a child's, whose parent is gone: --output was the parent's to write
    throw new Error("The parent probe is gone");
  }
  if (!isChild()) {
    contextOf(sys, opts);
    // The child writes to the stdout it inherits: one closed here would take its report with it, unsaid.
    if (opts.output === null && stdoutClosed(sys)) throw new Error("Cannot write the report: stdout is closed");
    return runInContext(argv, childMs(opts), { capture: opts.output !== null });
  }
  // The child's document, an error's too, goes to the parent through its stdout: --output is the parent's.
  opts.output = null;
  const context = await enterContext(sys, opts);
  opts.user = context.name;
  return context;
}

/** Whether this process is the child a parent probe started (a variable set by hand changes nothing). */
export const isChild = () => String(getppid()) === process.env[CHILD];
/** A child whose parent went before the child could tell: the variable names a process that is gone or dead. */
export function isOrphan(sys: Sys) {
  const parent = process.env[CHILD] ?? "";
  if (!/^\d+$/.test(parent) || isChild()) return false;
  const stat = sys.readText(`/proc/${parent}/stat`);
  return stat === null || /^\d+ \(.*\) [ZX] /s.test(stat);
}

/** How long the child may take: its checks, and what --bench, --qemu and --migrate add. */
export const childMs = (o: T.Options) =>
  60_000 + (o.bench ? 60_000 : 0) + (o.qemu !== null ? o.qemuMs : 0) + (o.migrate ? o.migrateMs + 5000 : 0);
/**
 * The whole probe again in a child that takes on the context first; signals go on to it; its status is
 * the answer. The wait is bounded by `ms`: a child still there then is killed, and the run is exit 2.
 */
export async function runInContext(
  argv: string[],
  ms: number,
  o: { capture?: boolean; command?: string[]; quiet?: boolean } = {},
) {
  // The child runs as another user: it gets none of root's environment but what it needs, and a session
  // of its own, so it has no controlling terminal to push input into.
  const env = Object.fromEntries(CHILD_ENV.filter((k) => process.env[k] !== undefined).map((k) => [k, process.env[k]]));
  const stdout = o.capture ? "pipe" : "inherit";
  const child = Bun.spawn([...(o.command ?? self()), ...argv], {
    env: { ...env, ...SELF_ENV, PWD: workingDirectory(), [CHILD]: String(process.pid) },
    cwd: "/",
    stdio: ["ignore", stdout, o.quiet ? "ignore" : "inherit"],
    detached: true,
  });
  // Signals go on to the child while it runs (--all runs many: each takes its handlers away when it is done).
  const signals = ["SIGINT", "SIGTERM", "SIGHUP"] as const;
  const passOn = (signal: NodeJS.Signals) => child.kill(signal);
  for (const signal of signals) process.on(signal, passOn);
  void child.exited.then(() => {
    for (const signal of signals) process.off(signal, passOn);
  });
  // --output is written by the parent, as root: the child's document comes through a pipe, bounded.
  const text = o.capture ? readBounded(child.stdout as ReadableStream<Uint8Array>) : Promise.resolve("");
  if (await within(child.exited, ms)) {
    const out = await text;
    if (out === null)
      throw new Error(`The probe's child wrote more than ${OUTPUT_MAX >> 20} MiB: no report is written`);
    // Killed (the OOM killer, an operator): what it wrote, if anything, is no whole report.
    if (child.signalCode) throw new Error(`The probe's child was killed by ${child.signalCode}: no report`);
    return { code: child.exitCode ?? 2, out };
  }
  child.kill("SIGKILL");
  // A child stuck in the kernel may not die at once: the parent does not wait on it, and does not stay for it.
  const gone = await within(child.exited, 1000);
  if (!gone) child.unref();
  throw new Error(`The probe's child did not finish within ${ms} ms: killed${gone ? "" : " (it may remain)"}`);
}
const BORROWED: T.Unjudged = [
  "this run keeps QEMU's CAP_SYS_PTRACE, which it would not have",
  "run the probe as that user, without --user",
];
/** What the child may see of the parent's environment. */
const CHILD_ENV = ["PATH", "TERM", "NO_COLOR", "LANG", "LC_ALL"];
/** A report is a few kilobytes: a child's stdout is read up to this; a longer one is no report (null). */
const OUTPUT_MAX = 1 << 24;
async function readBounded(stream: ReadableStream<Uint8Array>) {
  const [decoder, parts] = [new TextDecoder(), [] as string[]];
  let length = 0;
  for await (const chunk of stream) {
    if (length < OUTPUT_MAX) parts.push(decoder.decode(chunk, { stream: true }));
    length += chunk.length;
  }
  return length > OUTPUT_MAX ? null : parts.join("");
}

/**
 * In the child: read the process (as root), open its root and join its cgroups (so its device cgroup
 * rules apply to the probe as to QEMU; the membership ends with the child), then become its user and
 * die with the parent. Throws when the kernel refuses any step.
 */
export async function enterContext(sys: Sys, opts: T.Options): Promise<T.Context> {
  const pid = opts.pid;
  const P = pid === null ? null : loadPid();
  const read = P ? await P.pidContext(sys, pid!) : null;
  const context: T.Context = read ?? contextOf(sys, opts);
  if (P) for (const dir of P.cgroupDirs(sys, pid!)) P.joinCgroup(sys, dir);
  // What the run may still load, loaded now: the user the child becomes may not read the package's files (npx's cache
  // under /root). A worker thread's file (apparmor.ts) is read when it starts, as that user: a binary holds it inside.
  require("./diagnosis.ts");
  if (sys.readText("/sys/fs/selinux/enforce") !== null) require("./selinux.ts");
  if (opts.format === "prometheus") require("./textfile.ts");
  if (opts.bench) require("./bench.ts");
  if (opts.migrate) require("./migrate.ts");
  // QEMU's own CAP_SYS_PTRACE (its binary's file capability) comes along: the syscall's gate is then QEMU's.
  const exe = pid === null ? find(sys, opts.qemu) : null;
  const f = read?.process;
  // A capability held only inside a user namespace of the process's own is no capability here.
  const initial = f ? f.uidMap === INITIAL_UID_MAP : true;
  const ptrace = exe ? fileCapPtrace(exe) : initial && capBit(f?.capEff ?? null, CAP_SYS_PTRACE) === true;
  context.ptrace = ptrace && context.uid !== 0;
  // A run that kept QEMU's CAP_SYS_PTRACE sees what CRIU and Firecracker, without it, would not.
  const borrowed: T.Judging = (forQemu) => (context.ptrace && !forQemu ? BORROWED : null);
  context.judging = [...(context.judging ?? []), borrowed];
  // --pid: the process's own capabilities and bounding set (none of either from a user namespace of its own);
  // --user: root's all, else CAP_SYS_PTRACE or none.
  const user = context.uid === 0 ? "all" : ptrace ? 1n << CAP_SYS_PTRACE : 0n;
  const caps = !initial ? 0n : f ? mask(f.capEff) : user;
  const r = become(
    context.uid,
    context.gid,
    context.groups,
    caps,
    f ? { bounding: initial ? mask(f.capBnd) : 0n } : null,
  );
  if (r.ret < 0) throw new Error(`Cannot become ${context.name} (uid ${context.uid}): ${K.errnoName(r.errno)}`);
  // Set after the ids change (which clears it), then checked: the parent may have gone in between.
  libc().prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0);
  if (!isChild()) throw new Error("The parent probe is gone");
  // Its AppArmor profile, taken on by one thread of the child, as that user, to answer the routes.
  if (read) await P!.confine(read);
  // Its NoNewPrivs, for what the child starts from here on (QEMUs, their launchers): no file capability either.
  if (f?.noNewPrivs && libc().prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) !== 0)
    throw new Error("Cannot take on the process's NoNewPrivs");
  return context;
}
const loadPid = () => require("./pid.ts") as typeof import("./pid.ts");
