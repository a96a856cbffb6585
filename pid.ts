/**
 * --pid: a running QEMU read as root, in the child, before it takes on the process's context: its ids,
 * capabilities, cgroups, root, /dev, seccomp filters (seccomp.ts), AppArmor profile (apparmor.ts) and its
 * VM's configuration (vm.ts). The process belongs to a tenant: nothing it names is run, every path seen
 * through it is resolved inside its root, and what it wrote is quoted and escaped downstream. context.ts
 * loads this file only for --pid.
 *
 * ```ts
 * import { pidContext } from "./pid.ts";
 * const context = pidContext(sys, pid); // { name, uid, gid, groups, process, device, qemu, checks, ... }
 * ```
 */

import type { Confined } from "./apparmor.ts";
import type { Context } from "./context.ts";
import { getppid, INITIAL_UID_MAP, libc, processed, within } from "./context.ts";
import type { R, Sys } from "./ffi.ts";
import * as K from "./ffi.ts";
import type { Answers, Cause, Check, Judging, Unjudged } from "./probe.ts";
import { CAP_SYS_PTRACE, capBit, DEVICE, field, rows, sh, UsageError, uidMapOf } from "./probe.ts";
import type { Qemu } from "./qemu.ts";
import { rootsAlone, versionIn } from "./qemu.ts";
import type { FilterVerdict, Insn } from "./seccomp.ts";

/** What --pid takes from the process instead of the probe's own: its filters, namespace, capability, NoNewPrivs. */
export type ProcessFacts = {
  seccomp?: number | null;
  seccompFilters?: number | null;
  noNewPrivs?: boolean;
  uidMap?: string | null;
  userNamespace?: boolean | null;
  capSysPtrace?: boolean | null;
  filter?: FilterVerdict | null;
  apparmor?: Confinement | null;
  ownDev?: boolean;
};
/** The AppArmor profile the process runs under, and what the kernel answered the routes under it. */
export type Confinement = {
  profile: string;
  /** The routes the profile changed the kernel's answer on, with the answer under the profile. */
  denied: Partial<Answers>;
  /** CAP_SYS_PTRACE under the profile, tried when this run had it: "allowed", "denied", else unknown. */
  ptrace: "allowed" | "denied" | null;
};

/**
 * `message` answered by a worker thread running `file` (apparmor.ts, seccomp.ts), within `ms`; the thread ends on
 * every path, and with it whatever it holds (a profile, a tracee).
 */
async function fromWorker<T extends object>(file: string, message: object, ms: number): Promise<T | { error: string }> {
  const worker = new Worker(new URL(file, import.meta.url).href);
  try {
    let answer: T | { error: string } = { error: `${file}'s worker did not answer within ${ms} ms` };
    const answered = new Promise<void>((resolve) => {
      worker.onmessage = ({ data }) => resolve(void (answer = data));
      worker.onerror = (e) => resolve(void (answer = { error: `${file}'s worker failed: ${e.message}` }));
    });
    worker.postMessage(message);
    await within(answered, ms);
    return answer;
  } finally {
    worker.terminate();
  }
}

/**
 * The routes as `profile` lets them through: a worker thread takes it on (apparmor.ts) and answers them,
 * within a second. What the profile changed, and how CAP_SYS_PTRACE met it; or why it could not tell.
 */
async function confinedAnswers(profile: string, device: string | number) {
  const facts = typeof device === "string" ? { device, deviceSays: 0 } : { device: null, deviceSays: device };
  const done = await fromWorker<Confined>("./apparmor.ts", { profile, ...facts }, 1000);
  if ("error" in done) return { error: done.error };
  const denied = Object.fromEntries(
    Object.entries(done.after).filter(([r, ans]) => done.before[r as keyof Answers] !== ans),
  );
  return { denied: denied as Partial<Answers>, ptrace: done.ptrace };
}

/** Takes on the process's AppArmor profile in one thread of the child, to answer the routes under it. */
export async function confine(context: Context) {
  const profile = context.process?.profile;
  if (!profile || !context.facts) return;
  const confined = await confinedAnswers(profile, context.device!);
  if ("error" in confined) context.unanswered?.push([`--pid: ${confined.error}`, RELOAD]);
  else context.facts.apparmor = { profile, ...confined };
}
const STRINGS = (pid: number) => `strings /proc/${pid}/exe | grep 'QEMU emulator version'`;
const LET_STOP = "let the probe stop the process a moment: no other tracer, and Yama's ptrace_scope below 3";
const RELOAD = "load the process's AppArmor profile (apparmor_parser -r), then ask again";

/** A seccomp supervisor (USER_NOTIF) or tracer (TRACE) answers a route: no filter can tell ahead. */
const supervised =
  (verdict: FilterVerdict | null): Judging =>
  (_, routes) =>
    verdict?.undecided.some((r) => routes.includes(r)) ? UNDECIDED : null;
const UNDECIDED: Unjudged = [
  "a seccomp filter hands userfaultfd to a supervisor (USER_NOTIF) or a tracer (TRACE): they decide, not it",
  "ask the container runtime's seccomp supervisor what it answers for userfaultfd",
];
/** This VM's configuration counts for QEMU too: a VM check that fails refuses QEMU's capabilities. */
const refusedBy =
  (checks: Check[]): Judging =>
  (forQemu) =>
    forQemu && checks.some((c) => c.status === "fail") ? false : null;

/** The causes only a running process can have, as rows of probe.ts's table (its README entries too). */
export const CAUSES = {
  apparmor: {
    // The routes answered as the process's profile lets them through, and what it changed.
    when: ({ f }) => Object.keys(f.apparmor?.denied ?? {}).length > 0,
    blocks: "profiled",
    summary: ({ f }) => `the AppArmor profile ${f.apparmor?.profile} denies what QEMU needs for its userfaultfd`,
    evidence: [
      ({ f }) =>
        // The device's route follows its node's open(): said once.
        Object.entries(f.apparmor!.denied)
          .filter(([r]) => !(r === "device" && f.apparmor!.denied["device-node"]))
          .map(([r, ans]) =>
            r === "syscall"
              ? `userfaultfd(2) with CAP_SYS_PTRACE under it: ${ans}`
              : `${r === "device-node" ? `open of ${DEVICE}` : r} under it: ${ans}`,
          ),
    ],
    fix: [({ f }) => profileRules(f.apparmor!)],
  },
} satisfies Record<string, Cause>;

/** The local rules a profile needs for what it denied (the device, the capability), and its reload. */
function profileRules({ profile, denied }: Confinement) {
  // libvirt's per-VM profiles include its libvirt-qemu abstraction, whose local include is for site rules.
  const libvirt = profile.startsWith("libvirt-");
  const file = sh(`/etc/apparmor.d/local/${libvirt ? "abstractions/libvirt-qemu" : profile}`);
  const rules = [
    ...(denied["device-node"] || denied.device ? [`${DEVICE} rw,`] : []),
    ...(denied.syscall ? ["capability sys_ptrace,"] : []),
  ];
  const reload = libvirt
    ? `apparmor_parser -r ${sh(`/etc/apparmor.d/libvirt/${profile}`)}   # the running VM's profile`
    : `apparmor_parser -r /etc/apparmor.d/FILE   # FILE: the one that defines ${sh(profile)} and includes local/`;
  return [...rules.map((rule) => `echo '${rule}' >> ${file}`), reload];
}

/** The cgroup directories of `pid` that hold a controller (device access by default): its v1 one, and the v2 one. */
export function cgroupDirs(sys: Sys, pid: number | "self", controller = "devices") {
  const mounts = sys.readText("/proc/self/mountinfo") ?? "";
  const v1 = new RegExp(`^\\S+ \\S+ \\S+ \\S+ (\\S+) .* - cgroup \\S+ \\S*\\b${controller}\\b`, "m");
  const mountOf = (v: "v1" | "v2") => mounts.match(v === "v1" ? v1 : /^\S+ \S+ \S+ \S+ (\S+) .* - cgroup2 /m)?.[1];
  return (sys.readText(`/proc/${pid}/cgroup`) ?? "").split("\n").flatMap((line) => {
    const [, controllers, path] = line.match(/^\d+:([^:]*):(.*)$/) ?? [];
    const mount =
      controllers === "" ? mountOf("v2") : controllers?.split(",").includes(controller) ? mountOf("v1") : undefined;
    return mount && !path.split("/").includes("..") ? [`${mount}${path === "/" ? "" : path}`] : [];
  });
}
/** Moves this process into the cgroup at `dir`, unless it is frozen (a paused container would freeze the probe). */
export function joinCgroup(sys: Sys, dir: string) {
  const fd = sys.open(`${dir}/cgroup.procs`, K.O_WRONLY | K.O_CLOEXEC);
  const r = fd.ret < 0 ? fd : sys.write(fd.ret, String(process.pid));
  if (fd.ret >= 0) sys.close(fd.ret);
  if (r.ret < 0) throw new Error(`Cannot join the cgroup ${dir}: ${K.errnoName(r.errno)}`);
}

/** What /proc tells of a running process, read without stopping or tracing it; null for what is unreadable. */
export function processFacts(sys: Sys, pid: number) {
  const at = `/proc/${pid}`;
  const status = processed(sys, pid);
  const num = (key: string) => (field(status, key)?.match(/^\d+/) ? Number.parseInt(field(status, key)!, 10) : null);
  const root = link(`${at}/root`);
  /** A path as the process names it: the host's view of its root taken off (a chroot). */
  const inside = (path: string) => root && root !== "/" && (path === root || path.startsWith(`${root}/`));
  const seen = (path: string | null) => (path && inside(path) ? path.slice(root!.length) || "/" : path);
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
    capBnd: field(status, "CapBnd"),
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
    /** The files it holds open: each fd, its link's text as the host sees it, and the path it knows it by. */
    files: () =>
      fdsOf(pid).map((fd) => {
        const raw = link(`${at}/fd/${fd}`);
        return { fd, raw, path: seen(raw?.replace(/ \(deleted\)$/, "") ?? null) };
      }),
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
/** A mount of a mountinfo table: its id, device (major:minor), mount point, type and options (as escaped there). */
type Mount = NonNullable<ReturnType<typeof mountsOf>>[number];
/** /proc/PID/mountinfo's mounts: id, device, mount point (as the process sees it) and type; null if unread. */
/** mountinfo's octal escapes (\040 for a space) undone. */
const unoctal = (p: string) => p.replace(/\\([0-7]{3})/g, (_, o) => String.fromCharCode(Number.parseInt(o, 8)));
function mountsOf(text: string | null) {
  return (
    text
      ?.split("\n")
      .map((line) => line.split(" "))
      .filter((f) => f.includes("-"))
      .map((f) => {
        const [type, options] = [f[f.indexOf("-") + 1], f[f.indexOf("-") + 3] ?? ""];
        return { id: Number(f[0]), dev: f[2], point: unoctal(f[4]), type, options };
      }) ?? null
  );
}

// include/uapi/linux/openat2.h; O_NOFOLLOW (fcntl.h) is 0100000 on arm and powerpc, 0400000 elsewhere.
const [RESOLVE_NO_XDEV, RESOLVE_NO_MAGICLINKS, RESOLVE_IN_ROOT, NR_OPENAT2] = [0x01, 0x02, 0x10, 437];
const O_NOFOLLOW = ["arm", "arm64", "ppc64"].includes(process.arch) ? 0o100000 : 0o400000;
const [S_IFLNK, MAXSYMLINKS, PATH_MAX] = [0o120000, 40, 4096];
const [ENOSYS, ELOOP, EXDEV] = [K.errnoOf("ENOSYS"), K.errnoOf("ELOOP"), K.errnoOf("EXDEV")];
/** statx() from the attributes cached (include/uapi/linux/fcntl.h): FUSE's server is not asked. */
const AT_STATX_DONT_SYNC = 0x4000;
/** An open file's statx() from cached attributes: a FUSE server is not asked. */
const statOf = (sys: Sys, fd: number) => sys.stat("", fd, K.AT_EMPTY_PATH | AT_STATX_DONT_SYNC);
/**
 * `path` resolved inside the directory `root` as a process whose root it is resolves it, as an O_PATH
 * fd (or the errno): `..` and absolute symbolic links stay inside, magic links are refused (openat2()
 * with RESOLVE_IN_ROOT, 5.6+: ENOSYS before), with `resolve`'s flags too.
 */
export function openat2(root: number, path: string, resolve: number) {
  const flags = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS | resolve;
  const how = new BigUint64Array([BigInt(K.O_PATH | K.O_CLOEXEC), 0n, BigInt(flags)]);
  return K.answer(libc().syscall(NR_OPENAT2, root, K.cstr(path), how, how.byteLength) as number);
}
/**
 * The walk: openat(O_PATH|O_NOFOLLOW) a component at a time; a link's text is followed inside `root`.
 * `enters(fd)`, when given, is asked of the root and of each file reached before anything looks at or
 * into it: a reason stops the walk there (a FUSE mount that may never answer), unless that file is the last.
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
  // The root itself may be on FUSE (rootless Podman's fuse-overlayfs): nothing below it is looked up then.
  const refused = enters?.(top.ret);
  if (refused && parts.some((p) => p !== "" && p !== ".")) {
    sys.close(top.ret);
    return { ret: -1, errno: 0, stopped: refused };
  }
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
export async function pidContext(sys: Sys, pid: number): Promise<Context> {
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
  const frozen = frozenCgroup(sys, pid);
  if (frozen) throw new Error(`${who} is in a frozen cgroup, ${frozen} (a paused container?): thaw it, then ask again`);
  const root = sys.open(`/proc/${pid}/root`, K.O_PATH | K.O_CLOEXEC);
  if (root.ret < 0) throw new Error(`Cannot open /proc/${pid}/root: ${K.errnoName(root.errno)}`);
  const walk = walker(sys, root.ret, pid);
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
  // Only a QEMU of the host's own (this mount namespace and root, root's file) may be offered a file capability:
  // its path, walked as the host's (never into FUSE), must be the file it runs.
  const host = !unread && !f.ownMountNamespace && f.root === "/" ? walk.resolve(path) : null;
  const here = host !== null && host.ret >= 0 && !walk.refuses(host.ret) && sameFile(sys, host.ret, binary.ret);
  const grantable = here ? ownedAt(sys, walk, host.ret) : null;
  if (host && host.ret >= 0) sys.close(host.ret);
  const qemu: Qemu = {
    path,
    version,
    major: version ? Number(version.split(".")[0]) : undefined,
    ptrace: false, // the process's own CapEff decides, and comes along with the child
    grantable,
    error: version
      ? undefined
      : `${path}: no QEMU version could be read from its binary${unread ? ` (${unread})` : ""}`,
  };
  const { configChecks, CAUSES: VM_CAUSES } = require("./vm.ts") as typeof import("./vm.ts");
  // A file it holds is placed while the probe holds it too: an O_PATH open of its magic link touches no file system.
  // It must still be the file whose name was read: the fd may have been closed and used again since.
  const heldOn = (fd: string, raw: string | null) => {
    const mine = sys.open(`/proc/${pid}/fd/${fd}`, K.O_PATH | K.O_CLOEXEC);
    const same = mine.ret >= 0 && raw !== null && link(`/proc/self/fd/${mine.ret}`) === raw;
    const type = same ? (walk.mountOf(mine.ret)?.type ?? null) : null;
    if (mine.ret >= 0) sys.close(mine.ret);
    return type;
  };
  const files = () => f.files().map((file) => ({ path: file.path, type: () => heldOn(file.fd, file.raw) }));
  const vm = configChecks({ ...f, cmdline: f.cmdline, files, walk: (at) => walkedTo(sys, walk, at) });
  const name = rows(sys, "/etc/passwd").find((r) => r[2] === String(uid))?.[0] ?? String(uid);
  const fileBacked = vm.ram.shared || vm.ram.memPath !== null;
  const filters = f.seccomp === 2 ? await seccompOf(sys, pid, f.seccompFilters, fileBacked) : null;
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
    causes: { ...CAUSES, ...VM_CAUSES },
    judging: [supervised(filters?.verdict ?? null), refusedBy(vm.checks)],
    // Its filters for a copy of it (--migrate), but QEMU's own sandbox, the newest: the copy installs that itself.
    filters: vm.sandbox.length ? filters?.filters?.slice(0, -1) : filters?.filters,
    ram: { ...vm.ram, dir: vm.ram.memPath ? ramDir(sys, walk, vm.ram.memPath) : undefined },
    unanswered: [
      ...(version ? [] : [[`--pid: ${qemu.error}`, `read it from its bytes yourself: ${STRINGS(pid)}`] as Unjudged]),
      ...(filters?.error ? [[`--pid: ${filters.error}`, LET_STOP] as Unjudged] : []),
    ],
    facts: {
      ...{
        seccomp: f.seccomp,
        seccompFilters: f.seccompFilters,
        noNewPrivs: f.noNewPrivs,
        filter: filters?.verdict ?? null,
      },
      ...{ uidMap: f.uidMap, userNamespace: f.uidMap === null ? null : f.uidMap !== INITIAL_UID_MAP },
      capSysPtrace: capBit(f.capEff, CAP_SYS_PTRACE),
      ownDev: f.ownMountNamespace || f.root !== "/",
    },
  };
}
/**
 * The process's seccomp filters, read (seccomp.ts, loaded only here, by a worker thread of its own: the kernel lets
 * the process go when that thread ends, whether or not it stopped) and answered for each route to a uffd; or why
 * they could not be read, or answered on this architecture.
 */
async function seccompOf(sys: Sys, pid: number, expected: number | null, fileBacked: boolean) {
  const S = require("./seccomp.ts") as typeof import("./seccomp.ts");
  const read = await fromWorker<{ filters: Insn[][] }>("./seccomp.ts", { pid, ms: PTRACE_MS }, PTRACE_MS + 1000);
  if ("error" in read) return { error: `its seccomp filters could not be read: ${read.error}`, lengths: [] };
  const lengths = read.filters.map((f) => f.length);
  if (expected !== null && lengths.length !== expected)
    return { error: `${lengths.length} of its ${expected} seccomp filters could be read`, lengths };
  const verdict = S.verdicts(read.filters, K.arch!.name, sys.pageSize(), fileBacked);
  if (!verdict) return { error: `the probe knows no system call numbers for ${K.arch!.name}`, lengths };
  return { verdict, lengths, filters: read.filters };
}
/** How long the process may take to stop for its filters to be read. */
const PTRACE_MS = 1000;
/**
 * The frozen cgroup `pid` is in, or null: cgroup v2's cgroup.events, or the v1 freezer's freezer.state. A frozen
 * process never stops for ptrace, and a child that joined its cgroup would freeze too.
 */
export function frozenCgroup(sys: Sys, pid: number | "self") {
  return (
    cgroupDirs(sys, pid, "freezer").find(
      (dir) =>
        /^frozen 1$/m.test(sys.readText(`${dir}/cgroup.events`) ?? "") ||
        /^(FROZEN|FREEZING)$/.test(sys.readText(`${dir}/freezer.state`)?.trim() ?? ""),
    ) ?? null
  );
}
/** Whether an overlay has a layer (its lowerdir, upperdir) under one of the `fuse` mounts; any, if it names none. */
export function onFuse(overlay: Pick<Mount, "options">, fuse: Pick<Mount, "point">[]) {
  // Options split where mountinfo has a raw comma (one in a path is \054 there, a space \040); `lowerdir=` lists
  // layers split at a raw colon (an escaped one is \134: there), `lowerdir+=`, `upperdir=`, `datadir+=` one each.
  const options = [...overlay.options.matchAll(/(lowerdir=|(?:lower|upper|data)dir\+?=)([^,]*)/g)];
  const split = ([, key, value]: string[]) => (key === "lowerdir=" ? value.split(/(?<!\\134):/) : [value]);
  const layers = options
    .flatMap(split)
    .map((p) => unoctal(p).replace(/\\:/g, ":"))
    .filter(Boolean);
  const under = (path: string, point: string) => path === point || path.startsWith(point === "/" ? "/" : `${point}/`);
  // A relative layer is as its mounter typed it, from a directory the probe cannot know: it may be under FUSE.
  const fused = (p: string) => !p.startsWith("/") || fuse.some((f) => under(p, f.point));
  return fuse.length > 0 && (layers.length === 0 || layers.some(fused));
}
/**
 * How the probe walks a process's files: inside its root, and never into a file system that may never
 * answer (FUSE, or an overlay with a layer under a FUSE mount), nor into a mount it
 * cannot place. openat2() within the root's own mount where no FUSE is mounted; else, or where the path
 * crosses a mount, the walk, which looks at each file's mount before it looks into it, the root's first.
 */
function walker(sys: Sys, root: number, pid: number) {
  const tables = () => [`/proc/${pid}/mountinfo`, "/proc/self/mountinfo"].map((t) => mountsOf(sys.readText(t)) ?? []);
  const fuseIn = (mounts: Mount[]) => mounts.some((m) => m.type.startsWith("fuse"));
  /**
   * The mount an open file is on, from tables read once it is open (an open file holds its mount, so no
   * other has its id or device then): the process's by id, else the probe's by id, or by device (a
   * chroot's table leaves out the mount its root lies in; in a mount namespace of its own, under an id of
   * its copy's). Its device is statx()'s cached one, which FUSE is not asked for. Also the FUSE mounts of
   * either table, which an overlay may stack on (one unmounted since, or hidden from both, is not seen).
   */
  const placed = (fd: number) => {
    const id = Number(field(sys.readText(`/proc/self/fdinfo/${fd}`), "mnt_id"));
    const [theirs, ours] = tables();
    const byDevice = () => {
      const st = statOf(sys, fd);
      return st.ret === 0 ? ours.find((m) => m.dev === st.dev) : undefined;
    };
    const mount = theirs.find((m) => m.id === id) ?? ours.find((m) => m.id === id) ?? byDevice();
    return { mount, fuse: [...theirs, ...ours].filter((m) => m.type.startsWith("fuse")) };
  };
  const mountOf = (fd: number) => placed(fd).mount;
  const refuses = (fd: number) => {
    const { mount: m, fuse } = placed(fd);
    if (!m) return "it lies on a mount that is in no mount table the probe read, which it does not enter";
    const untrusted = m.type.startsWith("fuse") || (m.type === "overlay" && onFuse(m, fuse));
    return untrusted ? `it lies under the ${m.type} mount at ${m.point}, which the probe does not enter` : null;
  };
  // A walk stopped before a mount it does not enter answers ENODEV: what is there was not looked at.
  const resolve = (path: string): R & { stopped?: string } => {
    const within = tables().some(fuseIn) || refuses(root) ? null : openat2(root, path, RESOLVE_NO_XDEV);
    const r: R & { stopped?: string } =
      !within || [EXDEV, ENOSYS].includes(within.errno) ? walkIn(sys, root, path, refuses) : within;
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
/**
 * The directory a mem-path names, or its parent when it names a file (QEMU's two readings), as an O_PATH fd
 * walked inside the process's root; null when it cannot be reached or lies on a mount the probe does not enter.
 */
function ramDir(sys: Sys, walk: ReturnType<typeof walker>, memPath: string): number | null {
  for (const path of [memPath, memPath.replace(/\/+[^/]*\/*$/, "") || "/"]) {
    const r = walk.resolve(path);
    if (r.ret < 0) continue;
    if (!walk.refuses(r.ret) && (sys.stat("", r.ret, K.AT_EMPTY_PATH).mode & K.S_IFMT) === S_IFDIR) return r.ret;
    sys.close(r.ret);
  }
  return null;
}
const S_IFDIR = 0o040000;
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
/** Whether two open files are the same file (the same device and inode). */
function sameFile(sys: Sys, a: number, b: number) {
  const [x, y] = [statOf(sys, a), statOf(sys, b)];
  return x.ret === 0 && y.ret === 0 && x.dev === y.dev && x.ino === y.ino;
}
/**
 * hostOwned() for --pid, where the tenant may change a link or a mount on the way while the probe looks:
 * the kernel's name for the open file `fd` when it and each directory above it are root's, writable by no
 * one else, and on mounts the walk enters. Its directory is walked to and must hold that very file; those
 * above are reached by `..`, so no path is looked up again.
 */
function ownedAt(sys: Sys, walk: ReturnType<typeof walker>, fd: number): string | null {
  const name = link(`/proc/self/fd/${fd}`);
  if (!name?.startsWith("/") || name.endsWith(" (deleted)")) return null;
  const trusted = (at: number) => {
    const st = statOf(sys, at);
    return rootsAlone(st) && !walk.refuses(at) ? st : null;
  };
  const openAt = (dir: number, file: string) =>
    K.answer(libc().openat(dir, K.cstr(file), K.O_PATH | O_NOFOLLOW | K.O_CLOEXEC));
  const dirOf = name.slice(0, name.lastIndexOf("/")) || "/";
  const dir = walk.resolve(dirOf);
  if (dir.ret < 0) return null;
  const held = [dir.ret];
  try {
    if (!trusted(fd) || !trusted(dir.ret)) return null;
    const inDir = openAt(dir.ret, name.slice(name.lastIndexOf("/") + 1));
    if (inDir.ret >= 0) held.push(inDir.ret);
    if (inDir.ret < 0 || !sameFile(sys, inDir.ret, fd)) return null;
    for (let at = dir.ret; ; ) {
      const st = trusted(at);
      const up = st && openAt(at, "..");
      if (!st || !up || up.ret < 0) return null;
      held.push(up.ret);
      const parent = statOf(sys, up.ret);
      // At the root (its own parent): the directory checked must be the one the name says, no link between.
      if (parent.dev === st.dev && parent.ino === st.ino)
        return link(`/proc/self/fd/${dir.ret}`) === dirOf ? name : null;
      at = up.ret;
    }
  } finally {
    for (const h of held) sys.close(h);
  }
}

/** What the child cannot take on of the process (its seccomp filter, label, namespaces), with its known effect. */
function contextCheck(
  f: ReturnType<typeof processFacts>,
  qemu: Qemu,
  name: string,
  filters: Awaited<ReturnType<typeof seccompOf>> | null,
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
