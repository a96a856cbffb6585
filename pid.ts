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
import type { Sys } from "./ffi.ts";
import * as K from "./ffi.ts";
import { versionIn } from "./qemu.ts";
import * as S from "./shared.ts";
import type * as T from "./types.ts";
import { link, mapped, mountsOf, ownedAt, ramDir, sameFile, walkedTo, walker } from "./walk.ts";

const F = K.FFIType;
/** libc calls only this file makes. */
const calls = () => K.openLibc({ getppid: { args: [], returns: F.i32 } });
let opened: ReturnType<typeof calls> | null = null;
const libc = () => (opened ??= calls());

/** /proc/PID/status, or a usage error when the process is gone or unreadable. */
export function processed(sys: Sys, pid: number) {
  const status = sys.readText(`/proc/${pid}/status`);
  if (status === null) throw new S.UsageError(`No process ${pid}: /proc/${pid} is gone or unreadable`);
  return status;
}

/**
 * `message` answered by a worker thread running `file` (apparmor.ts, seccomp.ts), within `ms`; the thread ends on
 * every path, and with it whatever it holds (a profile, a tracee).
 */
async function fromWorker<T extends object>(file: string, message: object, ms: number): Promise<T | { error: string }> {
  const worker = new Worker(new URL(file, import.meta.url).href);
  try {
    let answer: T | { error: string } = { error: `${file}'s worker did not answer within ${ms} ms` };
    const answered = new Promise<void>((resolve) => {
      worker.onmessage = ({ data }) => {
        answer = data;
        resolve();
      };
      worker.onerror = (e) => {
        answer = { error: `${file}'s worker failed: ${e.message}` };
        resolve();
      };
    });
    worker.postMessage(message);
    await S.within(answered, ms);
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
    Object.entries(done.after).filter(([r, ans]) => done.before[r as keyof T.Answers] !== ans),
  );
  return { denied: denied as Partial<T.Answers>, ptrace: done.ptrace };
}

/** Takes on the process's AppArmor profile in one thread of the child, to answer the routes under it. */
export async function confine(context: PidContext) {
  const profile = context.process.profile;
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
  (verdict: T.FilterVerdict | null): T.Judging =>
  (_, routes) =>
    verdict?.undecided.some((r) => routes.includes(r)) ? UNDECIDED : null;
const UNDECIDED: T.Unjudged = [
  "a seccomp filter hands userfaultfd to a supervisor (USER_NOTIF) or a tracer (TRACE): they decide, not it",
  "ask the container runtime's seccomp supervisor what it answers for userfaultfd",
];
/**
 * This VM's configuration counts for QEMU too: a VM check that fails refuses QEMU's capabilities; one the probe could
 * not tell (a mem-path it does not enter) leaves them unjudged.
 */
const refusedBy = (checks: T.Check[]): T.Judging[] => {
  // A VM check stands in the way of every QEMU capability but those it spares: a background snapshot discards no RAM
  // and places no page (measured: QEMU 10 snapshots a VM whose RAM file is read-only).
  const bears = (c: T.Check, cap: T.Capability) => !(cap === "background-snapshot" && SNAPSHOT_SPARED.includes(c.id));
  return [
    (forQemu, _, cap) => (forQemu && checks.some((c) => c.status === "fail" && bears(c, cap)) ? false : null),
    (forQemu, _, cap) => {
      const untold = checks.find((c) => c.status === "skip" && bears(c, cap));
      return forQemu && untold ? [untold.detail, untold.hint ?? ""] : null;
    },
  ];
};
const SNAPSHOT_SPARED = ["vm-readonly", "vm-hugepages"];
/**
 * Its SELinux context, where SELinux is enabled: judged by the loaded policy on each route as QEMU walks it, against
 * the label of the node in its root when that is the userfaultfd device (selinux.ts); its refusals join every route's
 * answer where the kernel's earlier gates opened it.
 */
function selinuxOf(sys: Sys, f: ReturnType<typeof processFacts>, pid: number, device: K.R): T.Domain[] | null {
  if (sys.readText("/sys/fs/selinux/enforce") === null) return null;
  const whose = `process ${pid}`;
  if (!f.label) {
    const unknown = "its context (/proc/PID/attr/current) could not be read";
    return [{ whose, context: "?", scope: "all", denied: {}, says: [], permissive: [], rules: [], unknown }];
  }
  const SE = require("./selinux.ts") as typeof import("./selinux.ts");
  // The node's label is asked only of the userfaultfd device itself: anything else there answers as the kernel says.
  const misc = sys.readText("/proc/misc")?.match(/^\s*(\d+) userfaultfd$/m)?.[1];
  const node = device.ret >= 0 ? sys.stat("", device.ret, K.AT_EMPTY_PATH) : null;
  const isDevice = node?.ret === 0 && (node.mode & K.S_IFMT) === K.S_IFCHR && node.rdev.join(":") === `10:${misc}`;
  const kernel = sys.readText("/proc/sys/kernel/osrelease") ?? "";
  const sysctl = S.whole(sys.readText("/proc/sys/vm/unprivileged_userfaultfd"));
  const held = f.uidMap === S.INITIAL_UID_MAP && S.capBit(f.capEff, S.CAP_SYS_PTRACE) === true;
  const asked = {
    ...{ whose, scope: "all" as const, ptrace: sysctl === 1 ? undefined : held },
    ...{
      device: isDevice ? `/proc/self/fd/${device.ret}` : null,
      anonChecked: S.atLeast(kernel, 5, 12),
    },
  };
  return [SE.domainOf(sys, SE.policyOf(sys), f.label, asked)];
}
/** The host's huge pages: the default size (bytes), and the pool of each size (nr_, free_ and resv_hugepages). */
function hugePages(sys: Sys) {
  const kb = S.whole(S.field(sys.readText("/proc/meminfo"), "Hugepagesize")?.replace(/ kB$/, ""));
  const pool = (bytes: number) => {
    const dir = `/sys/kernel/mm/hugepages/hugepages-${bytes / 1024}kB`;
    const read = (n: string) => S.whole(sys.readText(`${dir}/${n}_hugepages`));
    const [total, free, resv] = [read("nr"), read("free"), read("resv")];
    return total === null || free === null || resv === null ? null : { total, free, resv, file: `${dir}/nr_hugepages` };
  };
  return { size: kb === null ? null : kb * 1024, pool };
}
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
              : `${r === "device-node" ? `open of ${S.DEVICE}` : r} under it: ${ans}`,
          ),
    ],
    fix: [({ f }) => profileRules(f.apparmor!)],
  },
} satisfies Record<string, T.Cause>;

/** The local rules a profile needs for what it denied (the device, the capability), and its reload. */
function profileRules({ profile, denied }: T.Confinement) {
  // libvirt's per-VM profiles include its libvirt-qemu abstraction, whose local include is for site rules.
  const libvirt = profile.startsWith("libvirt-");
  const file = S.sh(`/etc/apparmor.d/local/${libvirt ? "abstractions/libvirt-qemu" : profile}`);
  const rules = [
    ...(denied["device-node"] || denied.device ? [`${S.DEVICE} rw,`] : []),
    ...(denied.syscall ? ["capability sys_ptrace,"] : []),
  ];
  const reload = libvirt
    ? `apparmor_parser -r ${S.sh(`/etc/apparmor.d/libvirt/${profile}`)}   # the running VM's profile`
    : `apparmor_parser -r /etc/apparmor.d/FILE   # FILE: the one that defines ${S.sh(profile)} and includes local/`;
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
  const num = (key: string) =>
    S.field(status, key)?.match(/^\d+/) ? Number.parseInt(S.field(status, key)!, 10) : null;
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
    uids: S.field(status, "Uid")?.split(/\s+/).map(Number) ?? [],
    gids: S.field(status, "Gid")?.split(/\s+/).map(Number) ?? [],
    groups: (S.field(status, "Groups") ?? "").split(/\s+/).filter(Boolean).map(Number),
    capEff: S.field(status, "CapEff"),
    capBnd: S.field(status, "CapBnd"),
    noNewPrivs: num("NoNewPrivs") === 1,
    seccomp: num("Seccomp"),
    seccompFilters: num("Seccomp_filters"),
    uidMap: S.uidMapOf(sys.readText(`${at}/uid_map`)),
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
    /** Its huge pages (HugetlbPages, every size), null when unread. */
    hugetlbKb: num("HugetlbPages"),
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
/** At most FDS_MAX of a process's fds. */
const FDS_MAX = 4096;
function fdsOf(pid: number) {
  try {
    return (require("node:fs") as typeof import("node:fs")).readdirSync(`/proc/${pid}/fd`).slice(0, FDS_MAX);
  } catch {
    return [];
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
/** A --pid context: the core's, with the process as it was read (context.ts takes on its ids and capabilities). */
export type PidContext = T.Context & { process: ReturnType<typeof processFacts> };

export async function pidContext(sys: Sys, pid: number): Promise<PidContext> {
  const f = processFacts(sys, pid);
  const who = `Process ${pid} (${f.comm})`;
  const [uid, gid] = [f.uids[1], f.gids[1]];
  if (uid === undefined || gid === undefined)
    throw new S.UsageError(`No process ${pid}: /proc/${pid} is gone or unreadable`);
  if (f.kernelThread) throw new S.NotQemu(`${who} is a kernel thread, not a QEMU`);
  if ([process.pid, libc().getppid()].includes(pid)) throw new S.NotQemu(`${who} is the probe itself, not a QEMU`);
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
  if (!/qemu/i.test(path.split("/").at(-1)!)) throw new S.NotQemu(`${who} is not a QEMU: it runs ${path}`);
  const binary = program === null ? sys.open(`/proc/${pid}/exe`, K.O_PATH | K.O_CLOEXEC) : walk.resolve(path);
  const unread = binary.ret < 0 ? K.errnoName(binary.errno) : walk.refuses(binary.ret);
  if (!unread && program !== null && !mapped(sys, pid, binary.ret))
    throw new S.NotQemu(`${who} is not a QEMU: its command line names ${path}, which it does not run`);
  // Its bytes are read only once the file is known to be on a file system that answers.
  const read = unread ? null : versionIn(sys, `/proc/self/fd/${binary.ret}`, Date.now() + 5000);
  const version = read === "script" ? null : read;
  // The device, resolved as it resolves it, and looked at only where the file system answers.
  const node = walk.resolve(S.DEVICE);
  const device = node.ret >= 0 && walk.refuses(node.ret) ? { ret: -1, errno: K.errnoOf("ENODEV") } : node;
  // Only a QEMU of the host's own (this mount namespace and root, root's file) may be offered a file capability:
  // its path, walked as the host's (never into FUSE), must be the file it runs.
  const host = !unread && !f.ownMountNamespace && f.root === "/" ? walk.resolve(path) : null;
  const here = host !== null && host.ret >= 0 && !walk.refuses(host.ret) && sameFile(sys, host.ret, binary.ret);
  const grantable = here ? ownedAt(sys, walk, host.ret) : null;
  if (host && host.ret >= 0) sys.close(host.ret);
  const qemu: T.Qemu = {
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
    const mount = same ? (walk.mountOf(mine.ret) ?? null) : null;
    if (mine.ret >= 0) sys.close(mine.ret);
    return mount;
  };
  const files = () => f.files().map((file) => ({ path: file.path, mount: () => heldOn(file.fd, file.raw) }));
  const walked = (at: string) => walkedTo(sys, walk, at);
  const vm = configChecks({ ...f, cmdline: f.cmdline, files, walk: walked, hugePages: hugePages(sys), version });
  const name = S.rows(sys, "/etc/passwd").find((r) => r[2] === String(uid))?.[0] ?? String(uid);
  const fileBacked = vm.ram.shared || vm.ram.memPath !== null;
  const filters = f.seccomp === 2 ? await seccompOf(sys, pid, f.seccompFilters, fileBacked) : null;
  const own = contextCheck(f, qemu, name, filters);
  processed(sys, pid); // read whole, or not at all: a process that went while it was read is no answer
  const uidMap = f.uidMap === null ? null : f.uidMap !== S.INITIAL_UID_MAP;
  const devices = cgroupDirs(sys, pid).find((dir) => sys.readText(`${dir}/devices.list`) !== null) ?? null;
  const domains = selinuxOf(sys, f, pid, device);
  return {
    ...{ name, uid, gid, groups: [gid, ...f.groups.filter((g) => g !== gid)], process: f, qemu },
    device: device.ret < 0 ? device.errno : `/proc/self/fd/${device.ret}`,
    checks: [own, ...vm.checks],
    requires: vm.requires,
    causes: { ...CAUSES, ...VM_CAUSES, ...(devices ? { "device-cgroup": devicesAllow(sys, devices) } : {}) },
    judging: [supervised(filters?.verdict ?? null), ...refusedBy(vm.checks)],
    unanswered: [
      ...(version ? [] : [[`--pid: ${qemu.error}`, `read it from its bytes yourself: ${STRINGS(pid)}`] as T.Unjudged]),
      ...(filters?.error ? [[`--pid: ${filters.error}`, LET_STOP] as T.Unjudged] : []),
    ],
    facts: {
      ...{ seccomp: f.seccomp, seccompFilters: f.seccompFilters, noNewPrivs: f.noNewPrivs },
      ...{ filter: filters?.verdict ?? null, uidMap: f.uidMap, userNamespace: uidMap },
      capSysPtrace: S.capBit(f.capEff, S.CAP_SYS_PTRACE),
      ownDev: f.ownMountNamespace || f.root !== "/",
      ...(domains ? { domains } : {}),
    },
    // What the report shows of it: its arguments, mounts and files can be large, and are left out.
    shown: { ...f, cmdline: undefined, mounts: undefined, files: undefined, user: name },
    copy: {
      ...{ pid, exe: f.exe, noNewPrivs: f.noNewPrivs, sandbox: vm.sandbox },
      // Its filters (but QEMU's own sandbox, the newest: the copy installs that itself).
      filters: vm.sandbox.length ? filters?.filters?.slice(0, -1) : filters?.filters,
      ram: { ...vm.ram, dir: vm.ram.memPath ? ramDir(sys, walk, vm.ram.memPath) : undefined },
    },
  };
}
/**
 * A refinement of the device-cgroup cause for the process's v1 devices cgroup: its devices.list lacking c 10:MINOR rw
 * names the cause too (before any open is refused), and the fix adds the rule to that very cgroup, now.
 */
export function devicesAllow(sys: Sys, dir: string): Partial<T.Cause> {
  const allows = (minor: number) => {
    const rules = new RegExp(`^(a \\S+|c (\\*|10):(\\*|${minor})) (\\w+)$`, "gm");
    return [...(sys.readText(`${dir}/devices.list`) ?? "").matchAll(rules)].some(
      (m) => /r/.test(m[4]) && /w/.test(m[4]),
    );
  };
  return {
    when: ({ f }) => f.miscMinor !== null && !allows(f.miscMinor),
    evidence: [
      ({ f }) =>
        f.miscMinor !== null && !allows(f.miscMinor) ? `${dir}/devices.list: no c 10:${f.miscMinor} rw` : null,
    ],
    fix: [({ f }) => `echo 'c 10:${f.miscMinor} rw' > ${S.sh(`${dir}/devices.allow`)}   # this cgroup, now`],
  };
}
/**
 * The process's seccomp filters, read (seccomp.ts, loaded only here, by a worker thread of its own: the kernel lets
 * the process go when that thread ends, whether or not it stopped) and answered for each route to a uffd; or why
 * they could not be read, or answered on this architecture.
 */
async function seccompOf(sys: Sys, pid: number, expected: number | null, fileBacked: boolean) {
  const S = require("./seccomp.ts") as typeof import("./seccomp.ts");
  const read = await fromWorker<{ filters: T.Insn[][] }>("./seccomp.ts", { pid, ms: PTRACE_MS }, PTRACE_MS + 1000);
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
/** The process read: who it runs as, which QEMU, its namespace, cgroup and LSM label, and its filters read. */
function contextCheck(
  f: ReturnType<typeof processFacts>,
  qemu: T.Qemu,
  name: string,
  filters: Awaited<ReturnType<typeof seccompOf>> | null,
): T.Check {
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
