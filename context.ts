/**
 * Whose context the answer is for: `--user`'s user, or `--pid`'s running QEMU with its ids, cgroups,
 * /dev, seccomp filters, label and its VM's configuration. The parent probe starts the whole probe
 * again in a child, which takes on that context (the privilege switch, in one sequence: read the
 * process as root, join its cgroups, become its user) before any check runs. probe.ts loads this file
 * only for --user and --pid. A --pid process belongs to a tenant: nothing it names is run, every path
 * seen through it is resolved inside its root, and what it wrote is quoted and escaped downstream.
 *
 * ```ts
 * import { contextOf, enterContext } from "./context.ts";
 * const context = enterContext(sys, opts); // in the child: { name, uid, gid, groups, checks?, ... }
 * ```
 */

import type { Confined } from "./apparmor.ts";
import type { R, Sys } from "./ffi.ts";
import * as K from "./ffi.ts";
import type { Answers, Check, Options, ProcessFacts } from "./probe.ts";
import { CAP_SYS_PTRACE, capBit, DEVICE, field, quoted, rows, UsageError, uidMapOf } from "./probe.ts";
import type { Qemu } from "./qemu.ts";
import { fileCapPtrace, find, hostOwned, versionIn } from "./qemu.ts";

/** Tells the child which process started it: the parent's pid, which must be its getppid(). */
const CHILD = "POSTCOPY_PROBE_PARENT";
const MAX_ID = 4294967294; // (uid_t)-1 means "no change", not an id
const id = (v = "") => (/^\d{1,10}$/.test(v) && Number(v) <= MAX_ID ? Number(v) : null);
/** The initial user namespace's uid_map, as uidMapOf() reads it. */
const INITIAL_UID_MAP = "0 0 4294967295";
// include/uapi/linux/prctl.h, capability.h, asm-generic/signal.h
const [PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_SET_KEEPCAPS] = [1, 4, 8];
const [_LINUX_CAPABILITY_VERSION_3, SIGKILL] = [0x20080522, 9];
const T = K.FFIType;
/** libc calls only --user and --pid make: the privilege switch, and resolving paths inside a root. */
const calls = () =>
  K.openLibc({
    setgroups: { args: [T.u64, T.ptr], returns: T.i32 },
    setresgid: { args: [T.u32, T.u32, T.u32], returns: T.i32 },
    setresuid: { args: [T.u32, T.u32, T.u32], returns: T.i32 },
    capset: { args: [T.ptr, T.ptr], returns: T.i32 },
    prctl: { args: [T.i32, T.u64, T.u64, T.u64, T.u64], returns: T.i32 },
    getppid: { args: [], returns: T.i32 },
    // openat2() has no libc wrapper: the syscall, with the arguments it takes.
    syscall: { args: [T.i64, T.i32, T.ptr, T.ptr, T.u64], returns: T.i64_fast },
    openat: { args: [T.i32, T.ptr, T.i32], returns: T.i32 },
    readlinkat: { args: [T.i32, T.ptr, T.ptr, T.u64], returns: T.i64_fast },
  });
let opened: ReturnType<typeof calls> | null = null;
/** This file's libc calls, opened on first use. */
export const libc = () => (opened ??= calls());

/**
 * Sets groups, gid and uid (real, effective, saved), then the capabilities QEMU has: `all` (root in the
 * initial user namespace), `ptrace` alone (as a binary with that file capability would), or `none`.
 * The child stays not dumpable, so no process of that user can trace it or read its environment.
 */
function become(uid: number, gid: number, groups: number[], caps: "all" | "ptrace" | "none"): R {
  const c = libc();
  const set = K.answer(c.setgroups(groups.length, new Uint32Array(groups.length ? groups : [0])));
  if (set.ret === -1) return set;
  const g = K.answer(c.setresgid(gid, gid, gid));
  const keep = g.ret === -1 || caps !== "ptrace" ? g : K.answer(c.prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0));
  const u = keep.ret === -1 ? keep : K.answer(c.setresuid(uid, uid, uid));
  // __user_cap_header_struct {version, pid} and two __user_cap_data_struct {effective, permitted, inheritable}.
  const bit = caps === "ptrace" ? 1 << Number(CAP_SYS_PTRACE) : 0;
  const header = new Uint32Array([_LINUX_CAPABILITY_VERSION_3, 0]);
  const kept = u.ret === -1 || caps === "all" ? u : K.answer(c.capset(header, new Uint32Array([bit, bit, 0, 0, 0, 0])));
  return kept.ret === -1 ? kept : K.answer(c.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0));
}
const getppid = () => libc().getppid();

/** Who the probe answers for, and, for --pid, what it learnt of that process (read as root, before the switch). */
export type Context = {
  name: string;
  uid: number;
  gid: number;
  groups: number[];
  process?: ReturnType<typeof processFacts>;
  /** /dev/userfaultfd as that process sees it, resolved inside its root before the switch; else the errno. */
  device?: string | number;
  qemu?: Qemu;
  checks?: Check[];
  /** What the VM's memory needs of the host, beyond postcopy-ram. */
  needs?: Array<"postcopy-hugetlbfs" | "postcopy-shmem">;
  /** CAP_SYS_PTRACE kept for QEMU's sake (its file capability, or the process's): not CRIU's or Firecracker's. */
  ptrace?: boolean;
  /** --pid: why the process's seccomp filters could not be read, when they could not. */
  filterUnread?: string;
  /** --pid: why its AppArmor profile could not be taken on, when it could not. */
  apparmorUnread?: string;
  /** --pid: the facts that are the process's, not the child's: its seccomp filters, namespace, capability. */
  facts?: ProcessFacts;
};

/**
 * The context asked for: --user NAME|UID from /etc/passwd and /etc/group; --pid PID, in the parent,
 * only that the process is there (the child reads it whole). Usage errors otherwise.
 */
export function contextOf(sys: Sys, opts: Options): Context {
  if (process.getuid!() !== 0)
    throw new UsageError(`--${opts.pid !== null ? "pid" : "user"} needs root: this is uid ${process.getuid!()}`);
  if (opts.pid !== null) {
    processed(sys, opts.pid);
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
/** /proc/PID/status, or a usage error when the process is gone or unreadable. */
function processed(sys: Sys, pid: number) {
  const status = sys.readText(`/proc/${pid}/status`);
  if (status === null) throw new UsageError(`No process ${pid}: /proc/${pid} is gone or unreadable`);
  return status;
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

/** How long the child may take: its checks, and what --bench and --qemu add. */
export const childMs = (opts: Options) => 60_000 + (opts.bench ? 60_000 : 0) + (opts.qemu !== null ? opts.qemuMs : 0);
/**
 * The whole probe again in a child that takes on the context first; signals go on to it; its status is
 * the answer. The wait is bounded by `ms`: a child still there then is killed, and the run is exit 2.
 */
export async function runInContext(argv: string[], ms: number, o: { capture?: boolean; command?: string[] } = {}) {
  // A compiled binary is its own script; `bun probe.ts` needs the script named.
  const self = Bun.main.startsWith("/$bunfs/") ? [process.execPath] : [process.execPath, Bun.main];
  // The child runs as another user: it gets none of root's environment but what it needs, and a session
  // of its own, so it has no controlling terminal to push input into.
  const env = Object.fromEntries(CHILD_ENV.filter((k) => process.env[k] !== undefined).map((k) => [k, process.env[k]]));
  const stdout = o.capture ? "pipe" : "inherit";
  const child = Bun.spawn([...(o.command ?? self), ...argv], {
    env: { ...env, [CHILD]: String(process.pid) },
    stdio: ["ignore", stdout, "inherit"],
    detached: true,
  });
  for (const signal of ["SIGINT", "SIGTERM", "SIGHUP"] as const) process.on(signal, () => child.kill(signal));
  // --output is written by the parent, as root: the child's document comes through a pipe, bounded.
  const text = o.capture ? readBounded(child.stdout as ReadableStream<Uint8Array>) : Promise.resolve("");
  if (await within(child.exited, ms)) return { code: child.exitCode ?? 2, out: await text };
  child.kill("SIGKILL");
  // A child stuck in the kernel may not die at once: the parent does not wait on it, and does not stay for it.
  const gone = await within(child.exited, 1000);
  if (!gone) child.unref();
  throw new Error(`The probe's child did not finish within ${ms} ms: killed${gone ? "" : " (it may remain)"}`);
}
/** What the child may see of the parent's environment. */
const CHILD_ENV = ["PATH", "TERM", "NO_COLOR", "LANG", "LC_ALL"];
/** A report is a few kilobytes: a child's stdout is read up to this, and cut there. */
const OUTPUT_MAX = 1 << 24;
async function readBounded(stream: ReadableStream<Uint8Array>) {
  const [decoder, parts] = [new TextDecoder(), [] as string[]];
  let length = 0;
  for await (const chunk of stream) {
    if (length < OUTPUT_MAX) parts.push(decoder.decode(chunk, { stream: true }));
    length += chunk.length;
  }
  return parts.join("").slice(0, OUTPUT_MAX);
}

/**
 * The routes as `profile` lets them through: a worker thread takes it on (apparmor.ts) and answers them,
 * within a second. What the profile changed, and how CAP_SYS_PTRACE met it; or why it could not tell.
 */
async function confinedAnswers(profile: string, device: string | number) {
  const facts = typeof device === "string" ? { device, deviceSays: 0 } : { device: null, deviceSays: device };
  const worker = new Worker(new URL("./apparmor.ts", import.meta.url).href);
  try {
    const answered = new Promise<Confined>((resolve, reject) => {
      worker.onmessage = ({ data }) => resolve(data);
      worker.onerror = (e) => reject(e);
    });
    worker.postMessage({ profile, ...facts });
    let result: Confined | null = null;
    if (
      !(await within(
        answered.then((r) => (result = r)),
        1000,
      ))
    )
      return { error: "AppArmor's worker did not answer within 1000 ms" };
    const done = result as Confined | null;
    if (!done || "error" in done) return { error: done?.error ?? "AppArmor's worker did not answer" };
    const denied = Object.fromEntries(
      Object.entries(done.after).filter(([r, ans]) => done.before[r as keyof Answers] !== ans),
    );
    return { denied: denied as Partial<Answers>, ptrace: done.ptrace };
  } finally {
    worker.terminate();
  }
}

/** Whether `done` settles within `ms`; the timer goes with it, so nothing is left to keep the process up. */
async function within(done: Promise<unknown>, ms: number) {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const late = new Promise<boolean>((resolve) => (timer = setTimeout(() => resolve(false), ms)));
  const settled = await Promise.race([done.then(() => true), late]);
  clearTimeout(timer);
  return settled;
}

/**
 * In the child: read the process (as root), open its root and join its cgroups (so its device cgroup
 * rules apply to the probe as to QEMU; the membership ends with the child), then become its user and
 * die with the parent. Throws when the kernel refuses any step.
 */
export async function enterContext(sys: Sys, opts: Options): Promise<Context> {
  const pid = opts.pid;
  const context = pid === null ? contextOf(sys, opts) : pidContext(sys, pid);
  if (pid !== null) for (const dir of cgroupDirs(sys, pid)) joinCgroup(sys, dir);
  // QEMU's own CAP_SYS_PTRACE (its binary's file capability) comes along: the syscall's gate is then QEMU's.
  const exe = pid === null ? find(sys, opts.qemu) : null;
  const capEff = context.process?.capEff ?? null;
  // A capability held only inside a user namespace of the process's own is no capability here.
  const initial = context.process ? context.process.uidMap === INITIAL_UID_MAP : true;
  const ptrace = exe ? fileCapPtrace(exe) : initial && capBit(capEff, CAP_SYS_PTRACE) === true;
  context.ptrace = ptrace && context.uid !== 0;
  const caps = context.uid === 0 ? (initial ? "all" : "none") : ptrace ? "ptrace" : "none";
  const r = become(context.uid, context.gid, context.groups, caps);
  if (r.ret < 0) throw new Error(`Cannot become ${context.name} (uid ${context.uid}): ${K.errnoName(r.errno)}`);
  // Set after the ids change (which clears it), then checked: the parent may have gone in between.
  libc().prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0);
  if (!isChild()) throw new Error("The parent probe is gone");
  // Its AppArmor profile, taken on by one thread of the child to answer the routes (apparmor.ts).
  const profile = context.process?.profile;
  if (profile && context.facts) {
    const confined = await confinedAnswers(profile, context.device!);
    if ("error" in confined) context.apparmorUnread = confined.error;
    else context.facts.apparmor = { profile, ...confined };
  }
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
    return mount && !path.split("/").includes("..") ? [`${mount}${path === "/" ? "" : path}`] : [];
  });
}
/** Moves this process into the cgroup at `dir`, unless it is frozen (a paused container would freeze the probe). */
function joinCgroup(sys: Sys, dir: string) {
  if (/^frozen 1$/m.test(sys.readText(`${dir}/cgroup.events`) ?? ""))
    throw new Error(`The process's cgroup ${dir} is frozen (a paused container?): thaw it, then ask again`);
  const fd = sys.open(`${dir}/cgroup.procs`, K.O_WRONLY | K.O_CLOEXEC);
  const r = fd.ret < 0 ? fd : sys.write(fd.ret, String(process.pid));
  if (fd.ret >= 0) sys.close(fd.ret);
  if (r.ret < 0) throw new Error(`Cannot join the cgroup ${dir}: ${K.errnoName(r.errno)}`);
}

/** What /proc tells of a running process, read without stopping or tracing it; null for what is unreadable. */
function processFacts(sys: Sys, pid: number) {
  const at = `/proc/${pid}`;
  const status = processed(sys, pid);
  const num = (key: string) => (field(status, key)?.match(/^\d+/) ? Number.parseInt(field(status, key)!, 10) : null);
  const root = link(`${at}/root`);
  /** A path as the process names it: the host's view of its root taken off (a chroot). */
  const seen = (path: string | null) =>
    path && root && root !== "/" && path.startsWith(`${root}/`) ? path.slice(root.length) : path;
  const cmdline = sys.readText(`${at}/cmdline`);
  // /proc/PID/stat's ninth field, the task's flags: PF_KTHREAD (include/linux/sched.h) marks a kernel thread.
  const flags = Number(
    sys
      .readText(`${at}/stat`)
      ?.replace(/^.*\) /s, "")
      .split(" ")[6],
  );
  return {
    pid,
    kernelThread: (flags & PF_KTHREAD) !== 0,
    comm: sys.readText(`${at}/comm`)?.trim() ?? null,
    exe: seen(link(`${at}/exe`)),
    uids: field(status, "Uid")?.split(/\s+/).map(Number) ?? [],
    gids: field(status, "Gid")?.split(/\s+/).map(Number) ?? [],
    groups: (field(status, "Groups") ?? "").split(/\s+/).filter(Boolean).map(Number),
    capEff: field(status, "CapEff"),
    noNewPrivs: num("NoNewPrivs") === 1,
    seccomp: num("Seccomp"),
    seccompFilters: num("Seccomp_filters"),
    uidMap: uidMapOf(sys.readText(`${at}/uid_map`)),
    ownMountNamespace: link(`${at}/ns/mnt`) !== link("/proc/self/ns/mnt"),
    root,
    cwd: seen(link(`${at}/cwd`)),
    cgroups: (sys.readText(`${at}/cgroup`) ?? "").trim().split("\n"),
    label: sys.readText(`${at}/attr/current`)?.replace(/\0/g, "").trim() || null,
    /** Its AppArmor profile (AppArmor's own attr file, 5.8+; else the LSM's when AppArmor is the one on). */
    profile: profileOf(
      sys.readText(`${at}/attr/apparmor/current`) ?? (apparmorOn(sys) ? sys.readText(`${at}/attr/current`) : null),
    ),
    // QEMU calls munlockall() before postcopy: memory locked now is not a blocker.
    vmLckKb: num("VmLck"),
    /** Its arguments; null when they could not be read whole. */
    cmdline: cmdline === null ? null : cmdline.split("\0").slice(0, -1),
    mounts: mountsOf(sys.readText(`${at}/mountinfo`)),
    /** The files it holds open, by the path it knows them by, and the mount each is on (fdinfo's mnt_id). */
    files: () =>
      fdsOf(pid).map((fd) => ({
        path: seen(link(`${at}/fd/${fd}`)?.replace(/ \(deleted\)$/, "") ?? null),
        mnt: Number(field(sys.readText(`${at}/fdinfo/${fd}`), "mnt_id")),
      })),
  };
}
const PF_KTHREAD = 0x00200000;
const apparmorOn = (sys: Sys) => sys.readText("/sys/module/apparmor/parameters/enabled")?.trim() === "Y";
/** An AppArmor label without its mode ("libvirt-UUID (enforce)"): null when unconfined, or no label. */
const profileOf = (label: string | null) => {
  const name = label
    ?.replace(/\0/g, "")
    .trim()
    .replace(/ \((enforce|complain|kill|unconfined|prompt)\)$/, "");
  return !name || name === "unconfined" ? null : name;
};
/** A symbolic link's text (magic links in /proc: d_path(), nothing of the target file system is touched). */
const link = (path: string) => {
  try {
    return (require("node:fs") as typeof import("node:fs")).readlinkSync(path, "latin1");
  } catch {
    return null;
  }
};
/** At most FDS_MAX of a process's fds. */
const FDS_MAX = 4096;
function fdsOf(pid: number) {
  try {
    return (require("node:fs") as typeof import("node:fs")).readdirSync(`/proc/${pid}/fd`).slice(0, FDS_MAX);
  } catch {
    return [];
  }
}
/** /proc/PID/mountinfo's mounts: id, mount point (as the process sees it) and file system type; null if unread. */
function mountsOf(text: string | null) {
  const unoctal = (p: string) => p.replace(/\\([0-7]{3})/g, (_, o) => String.fromCharCode(Number.parseInt(o, 8)));
  return (
    text
      ?.split("\n")
      .map((line) => line.split(" "))
      .filter((f) => f.includes("-"))
      .map((f) => ({ id: Number(f[0]), point: unoctal(f[4]), type: f[f.indexOf("-") + 1] })) ?? null
  );
}

// include/uapi/linux/openat2.h; O_NOFOLLOW (fcntl.h) is 0100000 on arm and powerpc, 0400000 elsewhere.
const [RESOLVE_NO_MAGICLINKS, RESOLVE_IN_ROOT, NR_OPENAT2] = [0x02, 0x10, 437];
const O_NOFOLLOW = ["arm", "arm64", "ppc64"].includes(process.arch) ? 0o100000 : 0o400000;
const [S_IFLNK, MAXSYMLINKS, PATH_MAX] = [0o120000, 40, 4096];
const [ENOSYS, ELOOP] = [K.errnoOf("ENOSYS"), K.errnoOf("ELOOP")];
/**
 * `path` resolved inside the directory `root` as a process whose root it is resolves it, as an O_PATH
 * fd (or the errno): `..` and absolute symbolic links stay inside, magic links are refused. openat2()
 * with RESOLVE_IN_ROOT where the kernel has it (5.6+), else the same walk, a component at a time.
 */
export function resolveIn(sys: Sys, root: number, path: string): R {
  const how = new BigUint64Array([BigInt(K.O_PATH | K.O_CLOEXEC), 0n, BigInt(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)]);
  const r = K.answer(libc().syscall(NR_OPENAT2, root, K.cstr(path), how, how.byteLength) as number);
  return r.errno === ENOSYS ? walkIn(sys, root, path) : r;
}
/**
 * The walk: openat(O_PATH|O_NOFOLLOW) a component at a time; a link's text is followed inside `root`.
 * `enters(fd)`, when given, is asked of each file reached before anything looks at or into it: a reason
 * stops the walk there (a FUSE mount that may never answer), unless that file is the last.
 */
export function walkIn(
  sys: Sys,
  root: number,
  path: string,
  enters?: (fd: number) => string | null,
): R & { stopped?: string } {
  const c = libc();
  const open = (dir: number, name: string) =>
    K.answer(c.openat(dir, K.cstr(name), K.O_PATH | O_NOFOLLOW | K.O_CLOEXEC));
  const top = open(root, ".");
  if (top.ret < 0) return top;
  const dirs = [top.ret]; // where the walk is, last; the root first
  const parts = path.split("/");
  const text = new Uint8Array(PATH_MAX);
  try {
    for (let links = 0; parts.length; ) {
      const name = parts.shift()!;
      if (name === "" || name === ".") continue;
      if (name === "..") {
        if (dirs.length > 1) sys.close(dirs.pop()!); // `..` of the root is the root
        continue;
      }
      const fd = open(dirs.at(-1)!, name);
      if (fd.ret < 0) return fd;
      const stop = enters?.(fd.ret);
      if (stop && parts.some((p) => p !== "")) {
        sys.close(fd.ret);
        return { ret: -1, errno: 0, stopped: stop };
      }
      if (stop || (sys.stat("", fd.ret, K.AT_EMPTY_PATH).mode & K.S_IFMT) !== S_IFLNK) {
        dirs.push(fd.ret);
        continue;
      }
      const n = Number(c.readlinkat(fd.ret, K.cstr(""), text, text.length));
      sys.close(fd.ret);
      if (n < 0 || ++links > MAXSYMLINKS) return { ret: -1, errno: ELOOP };
      if (text[0] === 0x2f) while (dirs.length > 1) sys.close(dirs.pop()!); // absolute: from the root again
      parts.unshift(...K.latin1(text.subarray(0, n)).split("/"));
    }
    return { ret: dirs.pop()!, errno: 0 };
  } finally {
    for (const d of dirs) sys.close(d);
  }
}

/** glibc's ld.so options that take a value: the program it runs is the first argument after its options. */
const LOADER_VALUES = ["--library-path", "--inhibit-rpath", "--audit", "--preload", "--argv0"];
function loadedProgram(cmdline: string[]) {
  for (let i = 1; i < cmdline.length; i++) {
    if (!cmdline[i].startsWith("--")) return cmdline[i];
    if (LOADER_VALUES.includes(cmdline[i]) || cmdline[i].startsWith("--glibc-hwcaps-")) i++;
  }
  return null;
}

/**
 * --pid PID, in the child as root: the process's own ids (effective), its facts, its QEMU (read from its
 * bytes, never run), /dev/userfaultfd resolved inside its root, and its VM's configuration checks.
 * Answers only for a QEMU: a kernel thread, the probe itself or another program is an error (exit 2).
 */
function pidContext(sys: Sys, pid: number): Context {
  const f = processFacts(sys, pid);
  const who = `Process ${pid} (${f.comm})`;
  const [uid, gid] = [f.uids[1], f.gids[1]];
  if (uid === undefined || gid === undefined)
    throw new UsageError(`No process ${pid}: /proc/${pid} is gone or unreadable`);
  if (f.kernelThread) throw new Error(`${who} is a kernel thread, not a QEMU`);
  if ([process.pid, getppid()].includes(pid)) throw new Error(`${who} is the probe itself, not a QEMU`);
  if (f.cmdline === null)
    throw new Error(`${who}: its command line could not be read whole (over ${K.READ_MAX} bytes)`);
  if (f.mounts === null) throw new Error(`${who}: its mount table could not be read`);
  const root = sys.open(`/proc/${pid}/root`, K.O_PATH | K.O_CLOEXEC);
  if (root.ret < 0) throw new Error(`Cannot open /proc/${pid}/root: ${K.errnoName(root.errno)}`);
  const walk = walker(sys, root.ret, f.mounts);
  // A QEMU started through its dynamic loader (a QEMU in a tree of its own) runs the program the loader
  // was given; its command line (which it can rewrite) only names it: the program must be mapped to run.
  const exe = f.exe?.replace(/ \(deleted\)$/, "") ?? "";
  const program = /\/ld-[^/]*\.so[^/]*$/.test(exe) ? loadedProgram(f.cmdline) : null;
  const path = program === null ? exe : program.startsWith("/") ? program : `${f.cwd ?? ""}/${program}`;
  if (!/qemu/i.test(path.split("/").at(-1)!)) throw new Error(`${who} is not a QEMU: it runs ${path}`);
  const binary = program === null ? sys.open(`/proc/${pid}/exe`, K.O_PATH | K.O_CLOEXEC) : walk.resolve(path);
  const unread = binary.ret < 0 ? K.errnoName(binary.errno) : walk.refuses(binary.ret);
  if (!unread && program !== null && !mapped(sys, pid, binary.ret))
    throw new Error(`${who} is not a QEMU: its command line names ${path}, which it does not run`);
  // Its bytes are read only once the file is known to be on a file system that answers.
  const read = unread ? null : versionIn(sys, `/proc/self/fd/${binary.ret}`, Date.now() + 5000);
  const version = read === "script" ? null : read;
  // The device, resolved as it resolves it, and looked at only where the file system answers.
  const node = walk.resolve(DEVICE);
  const device = node.ret >= 0 && walk.refuses(node.ret) ? { ret: -1, errno: K.errnoOf("ENODEV") } : node;
  // Only a QEMU of the host's own (this mount namespace and root, root's file) may be offered a file capability.
  const here = !unread && !f.ownMountNamespace && f.root === "/" && sameFile(sys, path, `/proc/self/fd/${binary.ret}`);
  const qemu: Qemu = {
    path,
    version,
    major: version ? Number(version.split(".")[0]) : undefined,
    ptrace: false, // the process's own CapEff decides, and comes along with the child
    grantable: here && hostOwned(sys, path),
    error: version
      ? undefined
      : `${path}: no QEMU version could be read from its binary${unread ? ` (${unread})` : ""}`,
  };
  const vm = configChecks({ ...f, cmdline: f.cmdline, walk: (at) => walkedTo(sys, walk, at) });
  const name = rows(sys, "/etc/passwd").find((r) => r[2] === String(uid))?.[0] ?? String(uid);
  const filters = f.seccomp === 2 ? seccompOf(sys, pid, f.seccompFilters) : null;
  const own = contextCheck(f, qemu, name, filters);
  processed(sys, pid); // read whole, or not at all: a process that went while it was read is no answer
  return {
    name,
    uid,
    gid,
    groups: [gid, ...f.groups.filter((g) => g !== gid)],
    process: f,
    device: device.ret < 0 ? device.errno : `/proc/self/fd/${device.ret}`,
    qemu,
    ...vm,
    checks: [own, ...vm.checks],
    filterUnread: filters?.error,
    facts: {
      ...{
        seccomp: f.seccomp,
        seccompFilters: f.seccompFilters,
        noNewPrivs: f.noNewPrivs,
        filter: filters?.verdict ?? null,
      },
      ...{ uidMap: f.uidMap, userNamespace: f.uidMap === null ? null : f.uidMap !== INITIAL_UID_MAP },
      capSysPtrace: capBit(f.capEff, CAP_SYS_PTRACE),
    },
  };
}
/**
 * The process's seccomp filters, read (seccomp.ts, loaded only here) and answered for each route to a
 * uffd; or why they could not be read, or answered on this architecture.
 */
function seccompOf(sys: Sys, pid: number, expected: number | null) {
  const S = require("./seccomp.ts") as typeof import("./seccomp.ts");
  const read = S.readFilters(pid);
  if ("error" in read) return { error: `its seccomp filters could not be read: ${read.error}`, lengths: [] };
  const lengths = read.filters.map((f) => f.length);
  if (expected !== null && lengths.length !== expected)
    return { error: `${lengths.length} of its ${expected} seccomp filters could be read`, lengths };
  const verdict = S.verdicts(read.filters, K.arch!.name, sys.pageSize());
  if (!verdict) return { error: `the probe knows no system call numbers for ${K.arch!.name}`, lengths };
  return { verdict, lengths };
}
/**
 * How the probe walks a process's files: inside its root, and never into a file system that may never
 * answer (FUSE, or an overlay where FUSE is mounted: its lower layer may be one). openat2() where no such
 * mount is there, else the walk, which looks at each file's mount before it looks into it.
 */
function walker(sys: Sys, root: number, mounts: NonNullable<ReturnType<typeof mountsOf>>) {
  const fuse = mounts.some((m) => m.type.startsWith("fuse"));
  const mountOf = (fd: number) =>
    mounts.find((m) => m.id === Number(field(sys.readText(`/proc/self/fdinfo/${fd}`), "mnt_id")));
  const refuses = (fd: number) => {
    const m = mountOf(fd);
    const untrusted = m && (m.type.startsWith("fuse") || (fuse && m.type === "overlay"));
    return untrusted ? `it lies under the ${m.type} mount at ${m.point}, which the probe does not enter` : null;
  };
  // A walk stopped before a mount it does not enter answers ENODEV: what is there was not looked at.
  const resolve = (path: string): R & { stopped?: string } => {
    const r: R & { stopped?: string } = fuse ? walkIn(sys, root, path, refuses) : resolveIn(sys, root, path);
    return r.stopped ? { ...r, errno: K.errnoOf("ENODEV") } : r;
  };
  return { resolve, refuses, mountOf };
}
/** The file system a path reaches inside the process's root, by its mount (fdinfo's mnt_id). */
function walkedTo(sys: Sys, walk: ReturnType<typeof walker>, path: string) {
  const r = walk.resolve(path);
  if (r.stopped) return { type: null, how: r.stopped };
  if (r.ret < 0) return { type: null, how: `its path in the process's root: ${K.errnoName(r.errno)}` };
  const [type, refused] = [walk.mountOf(r.ret)?.type ?? null, walk.refuses(r.ret)];
  sys.close(r.ret);
  if (type?.startsWith("fuse") || !refused)
    return { type, how: type ? "its path in the process's root" : "its mount is not in the process's mount table" };
  return { type: null, how: refused };
}
/** Whether the file at `fd` is mapped executable in the process (/proc/PID/maps: its device and inode). */
function mapped(sys: Sys, pid: number, fd: number) {
  const st = sys.stat("", fd, K.AT_EMPTY_PATH);
  const [major, minor] = st.dev.split(":").map(Number);
  const dev = `${major.toString(16).padStart(2, "0")}:${minor.toString(16).padStart(2, "0")}`;
  const maps = sys.readText(`/proc/${pid}/maps`) ?? "";
  return maps.split("\n").some((l) => {
    const [, perms, , at, inode] = l.split(/\s+/);
    return perms?.[2] === "x" && at === dev && inode === String(st.ino);
  });
}
/** Whether two paths name the same file (the same device and inode). */
function sameFile(sys: Sys, a: string, b: string) {
  const [x, y] = [sys.stat(a), sys.stat(b)];
  return x.ret === 0 && y.ret === 0 && x.dev === y.dev && x.ino === y.ino;
}

/** What the child cannot take on of the process (its seccomp filter, label, namespaces), with its known effect. */
function contextCheck(
  f: ReturnType<typeof processFacts>,
  qemu: Qemu,
  name: string,
  filters: ReturnType<typeof seccompOf> | null,
): Check {
  const head = { id: "context", title: "the running process's own context (--pid)" };
  const what = [
    `${f.comm}[${f.pid}] runs as ${name} (uid ${f.uids[1]}), QEMU ${qemu.version ?? "of no known version"}`,
    f.ownMountNamespace ? "a mount namespace of its own" : "the host's mount namespace",
    `cgroup ${f.cgroups.find((c) => c.startsWith("0::"))?.slice(3) ?? f.cgroups[0]?.split(":")[2]}`,
    ...(f.label ? [`label ${f.label}`] : []),
  ].join(", ");
  if (!filters) return { ...head, status: "pass", detail: what };
  const read = `seccomp filters of ${filters.lengths.join(", ") || "?"} instructions`;
  if (filters.error) return { ...head, status: "warn", detail: `${what}; ${filters.error}` };
  return { ...head, status: "pass", detail: `${what}; ${read}, read and run for each route` };
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

/** What the VM checks need to know of the process: its arguments, locked memory, and how it sees its files. */
type VmView = Pick<ReturnType<typeof processFacts>, "cmdline" | "vmLckKb" | "cwd" | "mounts" | "files"> & {
  /** The file system of a path walked inside the process's root. */
  walk: (path: string) => { type: string | null; how: string };
};
/** A path made absolute against `cwd` and without `.` and `..`, as the kernel would name it (links aside). */
function absolute(path: string, cwd: string) {
  const parts: string[] = [];
  for (const p of `${path.startsWith("/") ? "" : cwd}/${path}`.split("/"))
    if (p === "..") parts.pop();
    else if (p && p !== ".") parts.push(p);
  return `/${parts.join("/")}`;
}
/**
 * The file system a mem-path is on, as the process sees it: the mount of the RAM file QEMU holds open
 * there, else of the path walked inside its root (`f.walk`), never looking into a FUSE mount (it may
 * never answer). A null type, and why, when the probe could not tell.
 */
function memPathOn(path: string, f: VmView): { type: string | null; how: string } {
  if (!path.startsWith("/") && f.cwd === null)
    return { type: null, how: "relative, and the process's cwd is unreadable" };
  if (f.mounts === null) return { type: null, how: "the process's mount table is unreadable" };
  const at = absolute(path, f.cwd ?? "/");
  const under = (p: string) => p === at || p.startsWith(at === "/" ? "/" : `${at}/`);
  const open = f.files().find((file) => file.path !== null && under(file.path));
  const held = open && f.mounts.find((m) => m.id === open.mnt);
  return held ? { type: held.type, how: "the RAM file QEMU holds open" } : f.walk(at);
}

/**
 * The VM's configuration, from its command line (`-x` and `--x` alike): memory backends (file-backed RAM
 * must be on tmpfs or hugetlbfs; shared memory needs MISSING_SHMEM, huge pages MISSING_HUGETLBFS) and
 * devices that block or endanger postcopy, each with QEMU's own message.
 */
export function configChecks(f: VmView & { cmdline: string[] }) {
  const args = f.cmdline.map((a) => (/^--[a-z]/.test(a) ? a.slice(1) : a));
  const values = (opt: string, first: string) =>
    args.flatMap((a, i) => (args[i - 1] === opt ? [optionValue(a, first)] : []));
  const backends = values("-object", "qom-type").filter((o) => String(o["qom-type"]).startsWith("memory-backend"));
  const memPaths = [
    ...backends.map((b) => b["mem-path"]),
    ...args.filter((_, i) => args[i - 1] === "-mem-path"),
  ].filter((p): p is string => typeof p === "string" && p !== "");
  const memory: string[] = [];
  let status: Check["status"] = "pass";
  const needs = new Set<"postcopy-hugetlbfs" | "postcopy-shmem">();
  for (const path of memPaths) {
    const { type, how } = memPathOn(path, f);
    if (type === "hugetlbfs") needs.add("postcopy-hugetlbfs");
    else if (type === "tmpfs") needs.add("postcopy-shmem");
    else if (type === null) {
      if (status === "pass") status = "skip";
      memory.push(`could not tell what mem-path ${path} is on: ${how}`);
    } else {
      status = "fail";
      memory.push(`mem-path ${path} is on ${type} (by ${how}): ${NOT_TMPFS}`);
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
  return { id: "vm-devices", title: "this VM's devices", status, detail, hint };
}
