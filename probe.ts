#!/bin/sh
/*/true 2>/dev/null; exec env BUN_RUNTIME_TRANSPILER_CACHE_PATH=0 \
  bun --config=/dev/null --no-env-file --cwd=/ "$(readlink -f -- "$0")" "$@" # */
// Run as a program, sh runs the line above: Bun then reads nothing of the working directory (no bunfig.toml,
// .env, package.json or tsconfig.json: --cwd=/ and the script's own path), and writes no transpiler cache.
/**
 * postcopy-probe: can QEMU do userfaultfd-based postcopy live migration on this host, in this
 * context — and if not, why, and what to run. It runs QEMU's own postcopy_ram_supported_by_host()
 * sequence (and what QEMU 8.0+ adds) against the real kernel, through ffi.ts, and answers for the
 * QEMU that will run: the installed one's version decides which way to a uffd counts.
 *
 * ```sh
 * bun probe.ts            # report; exit 0 supported, 1 not, 2 could not answer
 * bun probe.ts --json     # the postcopy-probe/1 JSON document
 * ```
 *
 * The file reads in the order the data flows, one banner per stage:
 *   Helpers        defined once, for the option files too           quoted(), sh(), shown(), field()
 *   Facts          read-only host context                           readFacts()
 *   Routes         the ways to a uffd, and which consumer takes which  ROUTES, CONSUMERS, qemuAnswers()
 *   Checks         QEMU's sequence, one row per check; what they learn  CHECKS, runChecks() -> Learnt
 *   Round trips    real faults served                               serveFaults(), TRIPS
 *   Capabilities   each consumer, judged on its route               NEEDS, judge()
 *   Diagnosis      one typed table of causes, gates and fixes        CAUSES, diagnose()
 *   Report         the pipeline, then one renderer                  probe(), renderHuman(), renderJson()
 *   Command line   options as data, main() and the exit status       OPTIONS, parseArgs(), main()
 * The default run is this file and ffi.ts. Each option's own code is a file loaded (require) only
 * when that option is used:
 *   qemu.ts        the QEMU binary: where it is, its version, its file capability, --qemu's QMP exchange
 *                  (also loaded when the routes disagree, or the syscall says EPERM)
 *   context.ts     --user and --pid: whose context the answer is for, the child, the privilege switch
 *   pid.ts         --pid: the running process read as root, its cgroups and AppArmor profile, the
 *                  causes only it can have (it loads seccomp.ts, apparmor.ts and vm.ts when they apply)
 *   bench.ts       --bench and its progress line
 *   textfile.ts    --format prometheus and --output: a report for node_exporter's textfile collector
 */
import type { Context } from "./context.ts";
import type { R, Sys } from "./ffi.ts";
import * as K from "./ffi.ts";
import type { Confinement, ProcessFacts } from "./pid.ts";
import type { Qemu } from "./qemu.ts";
import type { FilterVerdict } from "./seccomp.ts";

export const VERSION = "0.1.0";
export const SCHEMA = "postcopy-probe/1";
export type Status = "pass" | "warn" | "fail" | "skip";
/** One line of the report, with the per-check data the README documents. A check never prints or throws. */
export type Check = {
  id: string;
  title: string;
  status: Status;
  detail: string;
  errno?: string;
  hint?: string;
  /** uffd-open: what each route answered. */
  routes?: Answers;
  /** round-trip: each fault, served or not. */
  trips?: Record<string, TripResult>;
  /** The UFFD_FEATURE_* and UFFDIO_* names the kernel lacks for this check. */
  missing?: string[];
};
/** What the command line asks for; the renderers and checks read it. */
export type Options = Omit<ReturnType<typeof parseArgs>, "help" | "version">;
const { errnoName } = K;

// ── Helpers: defined once, for the option files too ──

/** A wrong command line, user or process: exit 2 with the message and the usage line. */
export class UsageError extends Error {}
/** An argument as a message shows it: quoted, control characters escaped, cut at 60 characters. */
export const quoted = (arg: string) => JSON.stringify(arg.length > 60 ? `${arg.slice(0, 60)}…` : arg);
/** `value` as one shell word: as it is when plainly safe, else in single quotes (a fix is pasted into a root shell). */
export const sh = (value: string) => (/^[\w@%+=:,./-]+$/.test(value) ? value : `'${value.replaceAll("'", `'\\''`)}'`);
/**
 * Control, format (bidirectional) and line-separator characters as escapes: nothing a target wrote (a
 * path, QEMU's words) reaches a terminal as it is.
 */
export const shown = (text: string) =>
  text.replace(/[\p{Cc}\p{Cf}\p{Zl}\p{Zp}]/gu, (c) => ESCAPES[c] ?? escaped(c.codePointAt(0)!));
const escaped = (n: number) => (n < 0x100 ? `\\x${n.toString(16).padStart(2, "0")}` : `\\u{${n.toString(16)}}`);
const ESCAPES: Record<string, string> = { "\n": "\\n", "\t": "\\t", "\r": "\\r" };
/**
 * The directory the probe was started in: its cwd, unless its shebang moved it to `/` (then the PWD of the shell
 * that ran the shebang names it). Relative paths on the command line are from there.
 */
export const workingDirectory = (env: Record<string, string | undefined> = process.env) =>
  process.cwd() === "/" && env.PWD?.startsWith("/") ? env.PWD : process.cwd();
/** $PATH without its relative entries ("", "."): nothing is looked for in the directory the probe was run from. */
export const absolutePath = (env: Record<string, string | undefined> = process.env) =>
  (env.PATH ?? "")
    .split(":")
    .filter((dir) => dir.startsWith("/"))
    .join(":");
/** The rows of a colon-separated database such as /etc/passwd or /etc/group. */
export const rows = (sys: Sys, path: string) => (sys.readText(path) ?? "").split("\n").map((l) => l.split(":"));
/** The value after `key:` in a /proc file such as /proc/meminfo, on its own line only: an empty value is "". */
export const field = (text: string | null, key: string) =>
  text?.match(new RegExp(`^${key}:[ \\t]*(.*)$`, "m"))?.[1] ?? null;
/** The first line of a uid_map, spaces squeezed: "0 0 4294967295" in the initial user namespace. */
export const uidMapOf = (text: string | null) => text?.trim().split("\n")[0].trim().replace(/\s+/g, " ") ?? null;
/** A capability bit of a CapEff mask, or null when the mask could not be read. */
export const capBit = (mask: string | null, bit: bigint) =>
  mask?.match(/^[0-9a-f]{1,16}$/i) ? (BigInt(`0x${mask}`) >> bit) % 2n === 1n : null;
/** A whole number from text, or null when the text is missing or not one: never a wrong fact. */
const whole = (text: string | null | undefined) => (text?.trim().match(/^-?\d+$/) ? Number(text) : null);
/** The name for an id in /etc/passwd or /etc/group, or the number as text. */
const nameOf = (table: string[][], id: number) => table.find((r) => r[2] === String(id))?.[0] ?? String(id);
/** `ls -l`'s letter for each file type (S_IFMT >> 12), and what a person calls it. */
const TYPES: Record<number, [string, string]> = {
  1: ["p", "a FIFO"],
  2: ["c", "a character device"],
  4: ["d", "a directory"],
  6: ["b", "a block device"],
  8: ["-", "a regular file"],
  10: ["l", "a symbolic link"],
  12: ["s", "a socket"],
};
export const typeOf = (mode: number) => TYPES[(mode & K.S_IFMT) >> 12] ?? ["?", "of an unknown type"];

// ── Facts: read-only host context ──

export const DEVICE = "/dev/userfaultfd";
export const CAP_SYS_PTRACE = 19n;
/** libvirt's own default cgroup_device_acl (qemu.conf), which a fix must keep. */
const LIBVIRT_ACL = ["null", "full", "zero", "random", "urandom", "ptmx", "kvm", "userfaultfd"].map((d) => `/dev/${d}`);

/** Read-only host context: every field is read from the host; null when it could not be read. */
export type Facts = ReturnType<typeof readFacts>;
/**
 * Reads the facts the checks and the diagnosis need; `device` is /dev/userfaultfd as QEMU sees it
 * (--pid: resolved inside its root), or the errno its resolution gave.
 */
export function readFacts(sys: Sys, device: string | number = DEVICE, theirs: ProcessFacts = {}) {
  const meminfo = sys.readText("/proc/meminfo");
  // The default huge page size; with /proc mounted subset=pid (systemd's ProcSubset=pid), the smallest sysfs lists.
  const hugeKb = whole(field(meminfo, "Hugepagesize")?.replace(/ kB$/, "")) ?? (meminfo ? null : hugeSizes()[0]);
  const status = sys.readText("/proc/self/status");
  const uid = process.getuid!();
  const uidMap = uidMapOf(sys.readText("/proc/self/uid_map"));
  const node = typeof device === "string" ? sys.stat(device) : null;
  const found = node?.ret === 0 ? node : null;
  const misc = sys.readText("/proc/misc")?.match(/^\s*(\d+) userfaultfd$/m)?.[1];
  const minor = whole(misc ?? sys.readText("/sys/class/misc/userfaultfd/dev")?.match(/^10:(\d+)$/m)?.[1]);
  // Only the userfaultfd device itself is ever opened: anything else there (a FIFO, a file, another
  // device) is not, and answers ENODEV.
  const isDevice = !!found && (found.mode & K.S_IFMT) === K.S_IFCHR && found.rdev.join(":") === `10:${minor}`;
  const enforce = sys.readText("/sys/fs/selinux/enforce")?.trim();
  const version = sys.readText("/proc/version") ?? "";
  const [passwd, groups] = [rows(sys, "/etc/passwd"), rows(sys, "/etc/group")];
  const libvirt = libvirtConf(sys.readText("/etc/libvirt/qemu.conf"));
  return {
    kernel:
      sys.readText("/proc/sys/kernel/osrelease")?.trim() ?? (require("node:os") as typeof import("node:os")).release(),
    device: isDevice ? (device as string) : null,
    /** The errno the device's route answers without an open(): its resolution's, or ENODEV for what is not it. */
    deviceSays: isDevice ? 0 : node === null ? (device as number) : node.ret < 0 ? node.errno : K.errnoOf("ENODEV"),
    arch: K.arch!.name,
    pageSize: sys.pageSize(),
    hugePageSize: hugeKb === null ? null : hugeKb * 1024,
    nrHugepages: whole(sys.readText("/proc/sys/vm/nr_hugepages")),
    uid,
    user: nameOf(passwd, uid),
    // Absent: no CONFIG_USERFAULTFD, or a kernel before 5.2.
    unprivilegedUserfaultfd: whole(sys.readText("/proc/sys/vm/unprivileged_userfaultfd")),
    capSysPtrace: capBit(field(status, "CapEff"), CAP_SYS_PTRACE),
    noNewPrivs: whole(field(status, "NoNewPrivs")) === 1,
    seccomp: whole(field(status, "Seccomp")), // 0 none, 1 strict, 2 filter
    seccompFilters: whole(field(status, "Seccomp_filters")),
    uidMap,
    userNamespace: uidMap === null ? null : uidMap !== "0 0 4294967295",
    // As `ls -l` shows it; null when there is no such node.
    devnode: found && {
      ...{ mode: modeString(found.mode), kind: what(found), uid: found.uid, gid: found.gid },
      ...{ owner: nameOf(passwd, found.uid), group: nameOf(groups, found.gid) },
    },
    // The kernel has the device even when this /dev lacks it (a container).
    miscMinor: minor,
    deviceCgroup: deviceCgroup(sys, minor),
    selinux: enforce === "1" ? "enforcing" : enforce === "0" ? "permissive" : null,
    // gVisor's Sentry: "-gvisor" in the release, or the fixed 2016 build date of its /proc/version.
    gvisor: /gvisor/i.test(version) || version.includes("Sun Jan 10 15:06:54 PST 2016"),
    libvirt,
    // The user QEMU runs as here: libvirt's setting, else a user named like QEMU's.
    qemuUser: libvirt?.user ?? ["qemu", "libvirt-qemu"].find((u) => passwd.some((r) => r[0] === u)) ?? null,
    kvmGroup: groups.some((g) => g[0] === "kvm"),
    // The tools a fix may use, when this host has them.
    tools: ["setfacl", "udevadm", "setcap"].filter((t) => Bun.which(t)),
    /** --pid: its seccomp filters' answer for each route (seccomp.ts), which comes before the kernel's. */
    filter: null as FilterVerdict | null,
    /** --pid: the AppArmor profile the process runs under, taken on to answer the routes (apparmor.ts). */
    apparmor: null as Confinement | null,
    /** --pid: its /dev is its own (a mount namespace or root of its own): a fix to the host's node misses it. */
    ownDev: false,
    // --pid: what is the process's own, not the probe's (its filters, namespace, capability, NoNewPrivs).
    ...theirs,
  };
}
/** The huge page sizes /sys/kernel/mm/hugepages lists, in kB, smallest first (none without hugetlbfs). */
function hugeSizes() {
  try {
    const names = (require("node:fs") as typeof import("node:fs")).readdirSync("/sys/kernel/mm/hugepages");
    return names
      .flatMap(
        (n) =>
          n
            .match(/^hugepages-(\d+)kB$/)
            ?.slice(1)
            .map(Number) ?? [],
      )
      .sort((x, y) => x - y);
  } catch {
    return [];
  }
}
/** `crw-------` for a character device with mode 0600. */
const modeString = (mode: number) =>
  typeOf(mode)[0] + [..."rwxrwxrwx"].map((c, i) => (mode & (0o400 >> i) ? c : "-")).join("");
/** What a file is, as a person says it: `a FIFO`, `c 1:3`. */
const what = (node: { mode: number; rdev: number[] }) =>
  (node.mode & K.S_IFMT) === K.S_IFCHR ? `c ${node.rdev.join(":")}` : typeOf(node.mode)[1];

/** libvirt's qemu.conf: the user it runs QEMU as, and its device ACL when set. */
function libvirtConf(text: string | null) {
  if (text === null) return null;
  const user = text.match(/^\s*user\s*=\s*"([^"]*)"/m)?.[1] ?? null;
  const acl = text.match(/^\s*cgroup_device_acl\s*=\s*\[([^\]]*)\]/m)?.[1];
  return { user, deviceAcl: acl === undefined ? null : [...acl.matchAll(/"([^"]*)"/g)].map((m) => m[1]) };
}

/** This process's cgroup v1 devices controller, and whether its devices.list lets c 10:MINOR be read and written. */
function deviceCgroup(sys: Sys, minor: number | null) {
  const path = sys.readText("/proc/self/cgroup")?.match(/^\d+:[\w,]*\bdevices\b[\w,]*:(.*)$/m)?.[1];
  const mount = sys.readText("/proc/self/mountinfo")?.match(/^\S+ \S+ \S+ (\S+) (\S+) .* - cgroup \S+ \S*\bdevices\b/m);
  if (path === undefined || !mount) return null; // no v1 devices controller: under cgroup v2 a BPF program decides
  const dir = `${mount[2]}${path.slice(mount[1] === "/" ? 0 : mount[1].length)}`.replace(/\/$/, "");
  const ours = new RegExp(`^(a \\S+|c (\\*|10):(\\*|${minor})) (\\w+)$`, "gm");
  const list = sys.readText(`${dir}/devices.list`);
  if (list === null || minor === null) return { dir, allows: null };
  return { dir, allows: [...list.matchAll(ours)].some((m) => /r/.test(m[4]) && /w/.test(m[4])) };
}

// ── Routes: the ways to a uffd, and which consumer takes which ──

/** The three ways to a uffd: /dev/userfaultfd's USERFAULTFD_IOC_NEW, userfaultfd(2), and user-mode-only. */
export type Route = "device" | "syscall" | "user-mode-only";
const ROUTES: Route[] = ["device", "syscall", "user-mode-only"];
/** What each way answered, "ok" or an errno name; "device-node" is the open() of the node alone. */
export type Answers = Record<Route | "device-node", string>;
const UFFD_FLAGS = K.O_CLOEXEC | K.O_NONBLOCK;

/** Where the device is, or the errno its route answers without an open(). */
type Device = Pick<Facts, "device" | "deviceSays">;
/** A new uffd through one route; the device's own fd is closed before returning, its open() told to `node`. */
function openRoute(sys: Sys, facts: Device, route: Route, node?: (r: R) => void): R {
  if (route === "syscall") return sys.userfaultfd(UFFD_FLAGS);
  if (route === "user-mode-only") return sys.userfaultfd(UFFD_FLAGS | K.UFFD_USER_MODE_ONLY);
  const dev = facts.device ? sys.open(facts.device, K.O_RDWR | K.O_CLOEXEC) : { ret: -1, errno: facts.deviceSays };
  node?.(dev);
  if (dev.ret < 0) return dev;
  try {
    return sys.ioctl(dev.ret, K.USERFAULTFD_IOC_NEW, UFFD_FLAGS);
  } finally {
    sys.close(dev.ret);
  }
}

/** The routes a consumer tries, given what each answered: a fix on any could open it; it takes the last one. */
type Consumer = (a: Answers) => Route[];
/** /dev/userfaultfd first; when the node's open() fails as `fallsBack` says, the syscall instead. */
function deviceFirst(fallsBack: (node: string) => boolean): Consumer {
  return (a) => (fallsBack(a["device-node"]) ? ["device", "syscall"] : ["device"]);
}
const syscallOnly: Consumer = () => ["syscall"];
/** The route each consumer takes (README: "Which route each consumer takes"). */
export const CONSUMERS = {
  // QEMU before 8.0 only calls userfaultfd(2).
  "qemu<8.0": syscallOnly,
  // QEMU 8.0+ (util/userfaultfd.c): the device when its open() succeeds, with no way back; else the syscall.
  "qemu>=8.0": deviceFirst((node) => node !== "ok"),
  // CRIU's lazy pages (criu/uffd.c) only call userfaultfd(2).
  criu: syscallOnly,
  // Firecracker's userfaultfd-rs 0.9: the device unless it is absent (ENOENT), then the syscall.
  firecracker: deviceFirst((node) => node === "ENOENT"),
};
export type ConsumerName = keyof typeof CONSUMERS;
/** What a consumer gets: the answer on the route it takes. */
const answerOf = (consumer: ConsumerName, a: Answers) => a[CONSUMERS[consumer](a).at(-1)!];
/** The QEMU consumer that decides: the installed (or given) QEMU's version; 8.0 and later when unknown. */
const qemuConsumer = (q: Qemu | null): ConsumerName => ((q?.major ?? 8) < 8 ? "qemu<8.0" : "qemu>=8.0");

/** The kernel's capability and sysctl gate is open: it would not say EPERM (the sysctl at 1, or CAP_SYS_PTRACE). */
const permitted = (f: Facts) =>
  f.unprivilegedUserfaultfd === 1 || (f.capSysPtrace === true && f.userNamespace === false);
const filtered = (f: Facts) => f.seccomp === 2 && !f.gvisor;
/** A seccomp filter, not the kernel, refuses userfaultfd(2): ENOSYS, or EPERM where the kernel would allow it. */
function filterDeniesSyscall(f: Facts, a: Answers) {
  const [major, minor] = f.kernel.split(/[.-]/).map((n) => Number.parseInt(n, 10) || 0);
  // UFFD_USER_MODE_ONLY (5.11+) is never refused by the kernel itself: EPERM for it is a filter's.
  const userModeOnlyExists = major > 5 || (major === 5 && minor >= 11);
  const epermIsTheFilters = permitted(f) || (a["user-mode-only"] === "EPERM" && userModeOnlyExists);
  return filtered(f) && (a.syscall === "ENOSYS" || (a.syscall === "EPERM" && epermIsTheFilters));
}
/** libvirt gives its QEMU a /dev of its own holding only what cgroup_device_acl lists. */
const libvirtHidesDevice = (f: Facts) => !!f.libvirt?.deviceAcl && !f.libvirt.deviceAcl.includes(DEVICE);
/** The answers as the deciding QEMU gets them: a cap_sys_ptrace file capability opens what only the sysctl refused. */
function qemuAnswers(a: Answers, f: Facts, qemu: Qemu | null): Answers {
  const onlySysctl = a.syscall === "EPERM" && !filterDeniesSyscall(f, a) && !f.noNewPrivs;
  const syscall = qemu?.ptrace && onlySysctl ? "ok" : a.syscall;
  const device = libvirtHidesDevice(f) ? { "device-node": "ENOENT", device: "ENOENT" } : {};
  return { ...a, syscall, ...device };
}

// ── Checks: QEMU's sequence, one row per check; what they learn ──

/** What the checks learn, in the order they learn it: one typed record, which runChecks() returns. */
export type Learnt = ReturnType<typeof learntAtStart>;
/** What is known before the first check: at most the QEMU a context (--user, --pid) already found. */
const learntAtStart = (qemu: Qemu | null) => ({
  /** uffd-open: each route's answer. */
  answers: null as Answers | null,
  /** The route the checks after uffd-open use: a kernel-mode uffd when there is one. */
  route: null as Route | null,
  /** uffd-api: the features the kernel offers. */
  features: null as bigint | null,
  /** qemu-route: the QEMU that will run, read only when it matters. */
  qemu,
  /** qemu-route: the way the deciding QEMU takes, and whether only its file capability opens it. */
  qemuRoute: null as { route: Route; byFileCap: boolean } | null,
  /** round-trip: each fault, served or not. */
  trips: {} as Record<string, TripResult>,
  /** The checks a limit of the probe's own process (EMFILE, ENOMEM, ...) kept from running. */
  limited: [] as string[],
});
type Probe = { sys: Sys; facts: Facts; opts: Options; learnt: Learnt };
type Head = Pick<Check, "id" | "title">;

/** A uffdio_api struct asking for `features`. */
const apiStruct = (features: bigint) => new BigUint64Array([K.UFFD_API, features, 0n]);
/** UFFDIO_* names of the ioctls in `names` whose bits are not set in `mask`. */
const missingIoctls = (mask: bigint, names: string[]) =>
  names.filter((n) => !(mask & (1n << BigInt(K._UFFDIO[n])))).map((n) => `UFFDIO_${n}`);
/** UFFD_FEATURE_* names of the features in `wanted` that `offered` lacks. */
const missingFeatures = (offered: bigint, wanted: bigint) =>
  Object.entries(K.UFFD_FEATURE)
    .filter(([, b]) => wanted & b && !(offered & b))
    .map(([n]) => `UFFD_FEATURE_${n}`);
const featureMask = (...names: string[]) => names.reduce((m, n) => m | K.UFFD_FEATURE[n], 0n);

/** Errors that are limits of the probe's own process, not answers about the host. */
const LIMITS = ["EMFILE", "ENFILE", "ENOMEM", "EAGAIN"];
const limited = (detail: string) => LIMITS.some((e) => detail.endsWith(`: ${e}`));
const OWN_LIMIT = "(a limit of the probe's own process, not an answer about the host)";
function result(head: Head, status: Status, detail: string, more: Partial<Check> = {}): Check {
  return { id: head.id, title: head.title, status, detail, ...more };
}
/** A failed call, `UFFDIO_REGISTER: EINVAL`. */
const said = (call: string, r: R) => `${call}: ${errnoName(r.errno)}`;
/** A check a limit of the probe's own process kept from running: skipped, and remembered as such. */
function ownLimit(p: Probe, head: Head, detail: string, more: Partial<Check> = {}) {
  p.learnt.limited.push(head.id);
  return result(head, "skip", `could not run: ${detail} ${OWN_LIMIT}`, more);
}
/** A failed call as a check result; a limit of the probe's own is a check it could not run. */
function failed(p: Probe, head: Head, detail: string) {
  if (limited(detail)) return ownLimit(p, head, detail);
  return result(head, "fail", detail, { errno: detail.split(": ").at(-1) });
}
/** The failed check when the kernel lacks features of `wanted` (QEMU's "Missing userfault features"), or null. */
function lacking(head: Head, offered: bigint, wanted: bigint) {
  const missing = missingFeatures(offered, wanted);
  return missing.length ? result(head, "fail", `kernel does not offer ${missing.join(", ")}`, { missing }) : null;
}

function checkPageSize(p: Probe, head: Head): Check {
  const [host, target] = [p.facts.pageSize, p.opts.targetPageSize];
  // QEMU: "Target page size bigger than host page size"
  return result(head, target > host ? "fail" : "pass", `host ${host}, target ${target}`);
}

/** What each route answers here: each opened once, then closed; the device node's open() told apart. */
export function routeAnswers(sys: Sys, facts: Device): Answers {
  const a: Answers = { "device-node": "", device: "", syscall: "", "user-mode-only": "" };
  for (const route of ROUTES) {
    const node = (r: R) => (a["device-node"] = r.ret < 0 ? errnoName(r.errno) : "ok");
    const r = openRoute(sys, facts, route, node);
    a[route] = r.ret < 0 ? errnoName(r.errno) : "ok";
    if (r.ret >= 0) sys.close(r.ret);
  }
  return a;
}

function checkOpen(p: Probe, head: Head): Check {
  // --pid: the process's AppArmor profile mediates the kernel's answers, and a seccomp filter of its
  // answers before the kernel does (SIGSYS: it kills or traps).
  const a = { ...routeAnswers(p.sys, p.facts), ...p.facts.apparmor?.denied, ...p.facts.filter?.answers };
  // The checks below use a kernel-mode uffd when there is one (the kernel answers the same on any route).
  const route = ROUTES.find((r) => a[r] === "ok") ?? null;
  Object.assign(p.learnt, { answers: a, route });
  const heard = `${DEVICE}: ${a.device}, userfaultfd(2): ${a.syscall}, user-mode-only: ${a["user-mode-only"]}`;
  if (Object.values(a).some((e) => LIMITS.includes(e))) return ownLimit(p, head, heard, { routes: a });
  if (route === null || route === "user-mode-only") return result(head, "fail", heard, { routes: a, errno: a.syscall });
  return result(head, "pass", `${heard}; checks use ${route}`, { routes: a });
}

/** The QEMU that will run, read only when it matters: its version splits the routes, or its file capability counts. */
function checkQemuRoute(p: Probe, head: Head): Check {
  const { facts, learnt } = p;
  const a = learnt.answers!;
  const seenByQemu = qemuAnswers(a, facts, null);
  const split = answerOf("qemu<8.0", seenByQemu) !== answerOf("qemu>=8.0", seenByQemu);
  // Its version decides, too, what QEMU makes of something else at the device's path (ENODEV).
  const impostor = a["device-node"] === "ENODEV";
  if (split || impostor || p.opts.qemu !== null || p.opts.migrate || a.syscall === "EPERM")
    learnt.qemu ??= loadQemu().identify(p.sys, facts, p.opts);
  const q = learnt.qemu;
  const consumer = qemuConsumer(q);
  const answer = answerOf(consumer, qemuAnswers(a, facts, q));
  const route = CONSUMERS[consumer](a).at(-1)!;
  learnt.qemuRoute = { route, byFileCap: answer === "ok" && a[route] !== "ok" };
  const via = learnt.qemuRoute.byFileCap ? " (by its cap_sys_ptrace file capability)" : "";
  if (split && !q?.version) {
    const why = `${q?.error ?? "no QEMU found"}; ${DEVICE}: ${a.device}, userfaultfd(2): ${a.syscall}`;
    return result(head, "warn", `${why}: yes for QEMU 8.0 and later, no before 8.0`);
  }
  const who = q?.version ? `QEMU ${q.version} (${q.path})` : "QEMU";
  return result(head, answer === "ok" ? "pass" : "fail", `${who} uses ${route}: ${answer}${via}`);
}
/** qemu.ts, loaded on first use only: a run that never needs to know its QEMU does not pay for it. */
const loadQemu = () => require("./qemu.ts") as typeof import("./qemu.ts");

/** UFFDIO_API asking for `features` on a throw-away uffd: the reply, or the failed check. */
function handshake(p: Probe, head: Head, features: bigint, call = "UFFDIO_API"): BigUint64Array | Check {
  const absent = lacking(head, p.learnt.features ?? features, features);
  if (absent) return absent;
  const fd = openRoute(p.sys, p.facts, p.learnt.route!);
  if (fd.ret < 0) return failed(p, head, said("userfaultfd", fd));
  try {
    const api = apiStruct(features);
    const r = p.sys.ioctl(fd.ret, K.UFFDIO_API, api);
    return r.ret < 0 ? failed(p, head, said(call, r)) : api;
  } finally {
    p.sys.close(fd.ret);
  }
}
/**
 * The check passed, or failed when the `ioctls` mask lacks any of `names`: QEMU's "Missing userfault
 * features" (ufd_check_and_apply() requires REGISTER and UNREGISTER), or "Missing userfault map features".
 */
function offering(head: Head, ioctls: bigint, detail: string, names = ["REGISTER", "UNREGISTER"], what = "features") {
  const missing = missingIoctls(ioctls, names);
  if (!missing.length) return result(head, "pass", detail);
  return result(head, "fail", `${detail}; Missing userfault ${what}: ${missing.join(", ")}`, { missing });
}

function checkApi(p: Probe, head: Head): Check {
  // QEMU's receive_ufd_features(): ask for nothing to learn what is offered.
  // A failure here is QEMU's "Userfault feature detection failed".
  const api = handshake(p, head, 0n);
  if (!(api instanceof BigUint64Array)) return api;
  p.learnt.features = api[1];
  const on = p.learnt.route === "user-mode-only" ? " on a user-mode-only uffd, the only one here" : "";
  return offering(head, api[2], `features 0x${api[1].toString(16)}, ioctls 0x${api[2].toString(16)}${on}`);
}

function checkFeatures(p: Probe, head: Head): Check {
  // QEMU's ufd_check_and_apply(): THREAD_ID when offered, for postcopy-blocktime.
  const asked = p.learnt.features! & K.UFFD_FEATURE.THREAD_ID;
  const api = handshake(p, head, asked);
  if (!(api instanceof BigUint64Array)) return api;
  const applied = offering(head, api[2], "UFFD_FEATURE_THREAD_ID applied");
  if (asked || applied.status === "fail") return applied;
  const missing = ["UFFD_FEATURE_THREAD_ID"];
  return result(head, "warn", "UFFD_FEATURE_THREAD_ID not offered: no postcopy-blocktime", { missing });
}

const CRIU_EVENTS = ["EVENT_FORK", "EVENT_REMAP", "EVENT_UNMAP", "EVENT_REMOVE"];
function checkCriu(p: Probe, head: Head): Check {
  const api = handshake(p, head, featureMask(...CRIU_EVENTS), `UFFDIO_API with ${CRIU_EVENTS.join("|")}`);
  // EPERM: EVENT_FORK needs CAP_SYS_PTRACE (5.5+), the kernel's answer for this context (criu-needs-ptrace).
  return api instanceof BigUint64Array ? result(head, "pass", `${CRIU_EVENTS.join(", ")} granted`) : api;
}

/** Kinds of memory QEMU registers, as mmap() flags. */
const ANON = K.MAP_PRIVATE | K.MAP_ANONYMOUS;
const MEMORY = { anon: ANON, hugetlb: ANON | K.MAP_HUGETLB | K.MAP_NORESERVE, shmem: K.MAP_SHARED };
const [MISSING, WP] = [K.UFFDIO_REGISTER_MODE_MISSING, K.UFFDIO_REGISTER_MODE_WP];
/** One registration test: the seed's sequence on one kind of memory, in one mode. */
type Registration = Head & { kind: keyof typeof MEMORY; mode: bigint };
const REGISTRATIONS: Registration[] = [
  { id: "register-anon", title: "UFFDIO_REGISTER MISSING on anonymous memory", kind: "anon", mode: MISSING },
  { id: "register-hugetlb", title: "UFFDIO_REGISTER MISSING on hugetlbfs memory", kind: "hugetlb", mode: MISSING },
  { id: "register-shmem", title: "UFFDIO_REGISTER MISSING on shared memory (memfd)", kind: "shmem", mode: MISSING },
  { id: "write-protect", title: "UFFDIO_REGISTER WP (background-snapshot)", kind: "anon", mode: WP },
];
/** What a registration needs from the kernel: a feature bit, and the ioctls it must offer on the range. */
function needs(spec: Registration) {
  if (spec.mode === WP) return { feature: K.UFFD_FEATURE.PAGEFAULT_FLAG_WP, ioctls: ["WRITEPROTECT"] };
  const feature = featureMask(...{ anon: [], hugetlb: ["MISSING_HUGETLBFS"], shmem: ["MISSING_SHMEM"] }[spec.kind]);
  // No ZEROPAGE on hugetlb: QEMU places zero huge pages with COPY.
  return { feature, ioctls: spec.kind === "hugetlb" ? ["WAKE", "COPY"] : ["WAKE", "COPY", "ZEROPAGE"] };
}

/** Memory to register: its kind and length, the mode, and the features the uffd asks for. */
type Range = { kind: keyof typeof MEMORY; len: number; mode: bigint; features: bigint };
type Use<T> = (fd: number, area: number, reg: BigUint64Array, release: () => void) => T | Promise<T>;

/**
 * QEMU's postcopy_ram_supported_by_host() up to its registration, generalised over the kind of memory:
 * a new uffd on `route`, UFFDIO_API, the memory mapped (a memfd behind shmem), UFFDIO_REGISTER; then
 * `use`. Owns the uffd, the memfd and the mapping, released in its `finally` (the seed's `goto out`);
 * `use` may close the uffd first with `release`, which frees a thread stuck in a fault nobody served.
 * Returns use's answer, or the failed call as `UFFDIO_REGISTER: EINVAL`.
 */
async function registered<T>(sys: Sys, facts: Facts, route: Route, m: Range, use: Use<T>): Promise<T | string> {
  const fd = openRoute(sys, facts, route);
  if (fd.ret < 0) return said("userfaultfd", fd);
  let [memfd, area, open] = [-1, -1, true];
  const release = () => {
    if (open) sys.close(fd.ret);
    open = false;
  };
  try {
    let r = sys.ioctl(fd.ret, K.UFFDIO_API, apiStruct(m.features));
    if (r.ret < 0) return said("UFFDIO_API", r);
    if (m.kind === "shmem") {
      r = sys.memfdCreate("postcopy-probe", K.MFD_CLOEXEC);
      if (r.ret < 0) return said("memfd_create", r);
      memfd = r.ret;
      r = sys.ftruncate(memfd, m.len);
      if (r.ret < 0) return said("ftruncate", r);
    }
    // Huge pages of exactly this size (MAP_HUGE_*): the default may be another.
    const size = m.kind === "hugetlb" ? Math.log2(m.len) << K.MAP_HUGE_SHIFT : 0;
    r = sys.mmap(0, m.len, K.PROT_READ | K.PROT_WRITE, MEMORY[m.kind] | size, memfd);
    if (r.ret === -1) return said("mmap", r);
    area = r.ret;
    const reg = new BigUint64Array([BigInt(area), BigInt(m.len), m.mode, 0n]);
    r = sys.ioctl(fd.ret, K.UFFDIO_REGISTER, reg);
    if (r.ret < 0) return said("UFFDIO_REGISTER", r); // QEMU: "UFFDIO_REGISTER failed"
    return await use(fd.ret, area, reg, release);
  } finally {
    release();
    if (area !== -1) sys.munmap(area, m.len);
    if (memfd >= 0) sys.close(memfd);
  }
}

/** One registration: register, unregister, and the ioctls the range offers ("Missing userfault map features"). */
async function register(p: Probe, spec: Registration): Promise<Check> {
  const { feature, ioctls } = needs(spec);
  const absent = lacking(spec, p.learnt.features!, feature);
  if (absent) return absent;
  const len = spec.kind === "hugetlb" ? p.facts.hugePageSize : p.facts.pageSize;
  if (!len) return result(spec, "fail", "no huge page size in /proc/meminfo or sysfs: a kernel without hugetlbfs");
  const range = { ...spec, len, features: feature };
  const checked = await registered(p.sys, p.facts, p.learnt.route!, range, (fd, _, reg) => {
    const r = p.sys.ioctl(fd, K.UFFDIO_UNREGISTER, reg.subarray(0, 2));
    if (r.ret < 0) return said("UFFDIO_UNREGISTER", r);
    const detail = `${len} B page, ioctls 0x${reg[3].toString(16)}`;
    const offered = offering(spec, reg[3], detail, ioctls, "map features");
    if (offered.status === "fail" || spec.kind !== "hugetlb" || p.facts.nrHugepages !== 0) return offered;
    return result(spec, "warn", `${detail}; vm.nr_hugepages is 0: hugetlbfs guests would get no pages`);
  });
  return typeof checked === "string" ? failed(p, spec, checked) : checked;
}

function checkRunAs(p: Probe, head: Head): Check {
  const { uid, user, qemuUser } = p.facts;
  const kept = uid !== 0 && p.facts.capSysPtrace ? ", keeping QEMU's CAP_SYS_PTRACE" : "";
  const asked = p.opts.user ? `, as --${p.opts.pid ? "pid" : "user"} asked${kept}` : "";
  if (p.opts.user || uid !== 0 || !qemuUser) return result(head, "pass", `probing as ${user} (uid ${uid})${asked}`);
  const hint = `postcopy-probe --user ${sh(qemuUser)}`;
  return result(head, "warn", `root's answer may not be QEMU's: QEMU runs as ${qemuUser} here; run ${hint}`, { hint });
}

/** The checks in report order: id, title, what must be learnt first, and how it runs. */
type Run = (p: Probe, head: Head) => Check | Promise<Check>;
type Step = [id: string, title: string, needs: keyof typeof UNMET | null, run: Run];
const UNMET = {
  answers: "uffd-open could not run",
  route: "no userfaultfd could be opened, not even user-mode-only",
  features: "UFFDIO_API did not answer",
};
const CHECKS: Step[] = [
  ["page-size", "host page size >= target page size", null, checkPageSize],
  ["uffd-open", "a userfaultfd (/dev/userfaultfd, then the syscall)", null, checkOpen],
  ["qemu-route", "the way the QEMU that will run opens its userfaultfd", "answers", checkQemuRoute],
  ["uffd-api", "UFFDIO_API handshake and REGISTER/UNREGISTER", "route", checkApi],
  ["uffd-features", "userfault features as QEMU applies them (THREAD_ID)", "features", checkFeatures],
  ...REGISTRATIONS.map((spec): Step => [spec.id, spec.title, "features", (p) => register(p, spec)]),
  ["criu-events", "non-cooperative events (CRIU lazy pages)", "features", checkCriu],
  ["round-trip", "real faults served with UFFDIO_COPY, bytes verified", "route", checkRoundTrip],
  ["run-as", "the user QEMU runs as", null, checkRunAs],
];

/** Runs the checks in order, skipping one whose prerequisite is missing: the checks and what they learnt. */
export async function runChecks(sys: Sys, facts: Facts, opts: Options, context?: Context) {
  const learnt = learntAtStart(context?.qemu ?? null);
  const p: Probe = { sys, facts, opts, learnt };
  const checks: Check[] = [];
  for (const [id, title, needs, run] of CHECKS) {
    const unmet = needs !== null && learnt[needs] === null;
    checks.push(unmet ? result({ id, title }, "skip", UNMET[needs!]) : await run(p, { id, title }));
  }
  // --pid: the running process's own context and its VM's configuration, read by context.ts.
  return { checks: [...checks, ...(context?.checks ?? [])], learnt };
}

/** Every kernel feature bit by name; bits the probe does not know go under `unknown` in hex. */
export function decodeFeatures(mask: bigint | null): Record<string, boolean | string> {
  if (mask === null) return {};
  const known = Object.values(K.UFFD_FEATURE).reduce((m, b) => m | b, 0n);
  const named = Object.fromEntries(Object.entries(K.UFFD_FEATURE).map(([n, b]) => [n, (mask & b) !== 0n]));
  return { ...named, unknown: `0x${(mask & ~known).toString(16)}` };
}

// ── Round trips: real faults served, bytes verified ──

/** How long any wait for a fault may take, and the slice between looks at the faulting thread. */
export const BOUND_MS = 1000;
const SLICE_MS = 5;
const NS_PER_US = 1000;
const EAGAIN = K.errnoOf("EAGAIN");
/** What runs every 1024 faults of a long run (--bench's progress line, and a turn of the event loop). */
export type Progress = (done: number) => Promise<void>;

/**
 * A thread that faults and how its faults are served: `fn` is the libc function the thread runs on
 * the area (strlen reads in user mode, uname writes in kernel mode); `prepare` readies the area before
 * it starts, `serve` answers the fault in `msg`, `finish` judges the thread's return value and the area.
 */
export type Faulting<T> = { kind: "anon" | "hugetlb"; len: number; mode: bigint; fn: string; count: number } & {
  prepare?: (fd: number, area: number) => string | null;
  serve: (fd: number, msg: BigUint64Array) => string | null;
  finish: (ret: number, area: number, served: Float64Array) => T | string;
};

/**
 * Starts a native thread on freshly registered memory and serves its faults, each wait bounded by
 * boundMs: poll a slice at a time, looking at the thread between slices, so a thread that returns
 * without faulting (EFAULT under user-mode-only) is seen at once. Owns the thread: its cleanup closes
 * the uffd before the join, which frees a thread stuck in a fault nobody served.
 */
export function serveFaults<T>(sys: Sys, facts: Facts, route: Route, boundMs: number, f: Faulting<T>, tick?: Progress) {
  const features = f.mode === WP ? K.UFFD_FEATURE.PAGEFAULT_FLAG_WP : 0n;
  return registered(sys, facts, route, { ...f, features }, async (fd, area, _, release) => {
    const unready = f.prepare?.(fd, area);
    if (unready) return unready;
    const t = sys.thread(f.fn, area);
    if (t.ret === -1) return said(`pthread_create(${f.fn})`, t);
    let thread = t.ret;
    try {
      const msg = new BigUint64Array(4);
      const served = new Float64Array(f.count);
      const after = (n: number) => (n ? ` after ${n} faults` : "");
      let deadline = Bun.nanoseconds() + boundMs * 1e6;
      for (let n = 0; n < f.count; ) {
        // Read first: in --bench the next fault is usually already waiting, and a poll would cost a syscall.
        const r = sys.read(fd, msg);
        if (r.ret === msg.byteLength) {
          if ((msg[0] & 0xffn) !== K.UFFD_EVENT_PAGEFAULT) continue;
          const unserved = f.serve(fd, msg);
          if (unserved) return unserved;
          served[n++] = Bun.nanoseconds();
          deadline = served[n - 1] + boundMs * 1e6;
          if (tick && (n & 1023) === 0) await tick(n);
          continue;
        }
        if (r.errno !== EAGAIN) return said("read", r);
        if (sys.poll(fd, SLICE_MS).ret > 0) continue;
        const done = sys.tryJoin(thread);
        if (done.errno === 0) {
          thread = -1; // reaped: the cleanup must not join it again
          const efault = done.ret === -1 ? " (EFAULT: the fault was not delivered)" : "";
          return `no fault event${after(n)}; ${f.fn} returned ${done.ret}${efault}`;
        }
        if (Bun.nanoseconds() > deadline) return `no fault event within ${boundMs} ms${after(n)}`;
      }
      const done = sys.join(thread);
      thread = -1;
      return f.finish(done.ret, area, served);
    } finally {
      release();
      if (thread !== -1) sys.join(thread);
    }
  });
}

/** A round trip: a libc function on a native thread faults on a fresh page, the probe serves it. */
type Trip = { key: string; name: string; fn: string; mode: bigint; resolve: bigint; flags: bigint };
/** Where the copied pattern's NUL sits: strlen's answer proves the bytes arrived. */
export const PATTERN_NUL = 1234;
const [COPY, ZEROPAGE, WRITEPROTECT] = [K.UFFDIO_COPY, K.UFFDIO_ZEROPAGE, K.UFFDIO_WRITEPROTECT];
const [READ, WRITE] = [0n, K.UFFD_PAGEFAULT_FLAG_WRITE];
const WP_WRITE = K.UFFD_PAGEFAULT_FLAG_WP | WRITE;
const TRIPS: Trip[] = [
  { key: "user-read", name: "user-mode read", fn: "strlen", mode: MISSING, resolve: COPY, flags: READ },
  // The kernel's copy_to_user, as KVM and vhost touch guest RAM; a user-mode-only uffd gets no event.
  { key: "kernel-write", name: "kernel-mode write", fn: "uname", mode: MISSING, resolve: COPY, flags: WRITE },
  { key: "zeropage", name: "zeropage", fn: "strlen", mode: MISSING, resolve: ZEROPAGE, flags: READ },
  { key: "write-protect", name: "write-protect", fn: "time", mode: WP, resolve: WRITEPROTECT, flags: WP_WRITE },
];
/** null when the thread's return value and the page's bytes prove the fault was served. */
function verify(t: Trip, ret: number, page: Uint8Array) {
  if (t.key === "user-read") return ret === PATTERN_NUL ? null : `strlen returned ${ret}, not ${PATTERN_NUL}`;
  if (t.key === "zeropage") return ret === 0 ? null : `strlen returned ${ret} on a zero page`;
  if (t.fn === "uname") return ret === 0 && K.latin1(page.subarray(0, 5)) === "Linux" ? null : `uname returned ${ret}`;
  // time() stores its answer in the page: the 32 low bits must match what it returned.
  const stored = Number(BigInt.asIntN(32, new BigInt64Array(page.buffer, page.byteOffset, 1)[0]));
  return ret !== -1 && stored === ret ? null : `time returned ${ret}, the page holds ${stored}`;
}
export type TripResult = { ok: boolean; ns: number; detail: string };

/** One round trip: a thread faults on one fresh page, the fault is served, the bytes are checked. */
async function roundTrip(p: Probe, t: Trip): Promise<TripResult> {
  const len = p.facts.pageSize;
  const start = Bun.nanoseconds();
  // The kernel copies from `src` during UFFDIO_COPY: `serve` below holds it until then.
  const src = new Uint8Array(len).fill(0x50);
  src[PATTERN_NUL] = 0;
  let page = 0n;
  const served = await serveFaults(p.sys, p.facts, p.learnt.route!, p.opts.boundMs, {
    ...{ kind: "anon", len, mode: t.mode, fn: t.fn, count: 1 },
    prepare(fd, area) {
      page = BigInt(area);
      if (t.mode !== WP) return null;
      K.memory(area, len)[0] = 1; // write-protect guards present pages only
      const r = p.sys.ioctl(fd, WRITEPROTECT, new BigUint64Array([page, BigInt(len), K.UFFDIO_WRITEPROTECT_MODE_WP]));
      return r.ret < 0 ? said("UFFDIO_WRITEPROTECT", r) : null;
    },
    serve(fd, msg) {
      const [flags, address] = [msg[1], msg[2]];
      if (flags !== t.flags || address !== page) return `unexpected fault: flags ${flags} at 0x${address.toString(16)}`;
      const r = p.sys.ioctl(fd, t.resolve, resolution(t, page, len, src));
      return r.ret < 0 ? said("resolve", r) : null;
    },
    finish: (ret, area) => verify(t, ret, K.memory(area, len)) ?? Bun.nanoseconds() - start,
  });
  if (typeof served === "string") return { ok: false, ns: Bun.nanoseconds() - start, detail: `${t.name}: ${served}` };
  return { ok: true, ns: served, detail: `${t.name} ${Math.round(served / NS_PER_US)} µs` };
}

/** The resolving ioctl's struct for a fault at `page`: uffdio_copy, uffdio_zeropage or uffdio_writeprotect. */
function resolution(t: Trip, page: bigint, len: number, src: Uint8Array) {
  if (t.resolve === COPY) return new BigUint64Array([page, BigInt(K.addressOf(src)), BigInt(len), 0n, 0n]);
  if (t.resolve === ZEROPAGE) return new BigUint64Array([page, BigInt(len), 0n, 0n]);
  return new BigUint64Array([page, BigInt(len), 0n]); // mode 0: clear WP and wake
}

async function checkRoundTrip(p: Probe, head: Head): Promise<Check> {
  const { route, features, trips } = p.learnt;
  const wp = features !== null && (features & K.UFFD_FEATURE.PAGEFAULT_FLAG_WP) !== 0n;
  for (const t of TRIPS.filter((t) => wp || t.mode !== WP)) trips[t.key] = await roundTrip(p, t);
  const all = Object.values(trips);
  const detail = all.map((t) => t.detail).join(", ");
  const limit = all.find((t) => limited(t.detail));
  if (limit) return ownLimit(p, head, limit.detail, { trips });
  if (route === "user-mode-only") {
    // QEMU's own uffd may be a kernel-mode one (by its file capability): that is unproven, not refused.
    const byFileCap = p.learnt.qemuRoute?.byFileCap;
    const why = byFileCap
      ? `QEMU's own uffd (by its file capability) serves kernel-mode faults, unproven here: ${AS_QEMU}`
      : "QEMU cannot serve KVM's and vhost's kernel-mode faults with it";
    return result(head, byFileCap ? "warn" : "fail", `only a UFFD_USER_MODE_ONLY uffd: ${detail}; ${why}`, { trips });
  }
  return result(head, all.every((t) => t.ok) ? "pass" : "fail", `${detail} (thread start to join)`, { trips });
}
const AS_QEMU = "run as root with --user, which keeps QEMU's capability, or ask QEMU with --qemu";

// ── Capabilities: each consumer, judged on the route it takes ──

/** Each capability: whose it is, the checks it needs passed, the faults it needs served, the features it needs. */
type Need = { consumer: "qemu" | ConsumerName; checks: string[]; trips: string[]; features?: string[] };
/** What postcopy needs on any memory: QEMU's sequence on anonymous memory, and both faults served. */
const RAM_CHECKS = ["page-size", "uffd-api", "uffd-features", "register-anon"];
const RAM = { checks: RAM_CHECKS, trips: ["user-read", "kernel-write"] };
const NEEDS = {
  "postcopy-ram": { consumer: "qemu", ...RAM },
  "postcopy-hugetlbfs": { consumer: "qemu", ...RAM, checks: [...RAM.checks, "register-hugetlb"] },
  "postcopy-shmem": { consumer: "qemu", ...RAM, checks: [...RAM.checks, "register-shmem"] },
  "background-snapshot": { consumer: "qemu", checks: ["uffd-api", "write-protect"], trips: ["write-protect"] },
  "postcopy-blocktime": { consumer: "qemu", ...RAM, features: ["THREAD_ID"] },
  // Postcopy beside multifd (parallel migration): what postcopy-ram needs, from a QEMU that can (qemu.ts).
  "postcopy-multifd": { consumer: "qemu", ...RAM },
  "criu-lazy-pages": { consumer: "criu", checks: ["criu-events"], trips: [] },
  "firecracker-uffd": { consumer: "firecracker", checks: ["register-anon"], trips: [], features: ["EVENT_REMOVE"] },
} satisfies Record<string, Need>;
export type Capability = keyof typeof NEEDS;
export const CAPABILITIES = Object.keys(NEEDS) as Capability[];
const consumerOf = (cap: Capability, q: Qemu | null) =>
  NEEDS[cap].consumer === "qemu" ? qemuConsumer(q) : (NEEDS[cap].consumer as ConsumerName);

/** Why a capability could not be judged, and what would settle it. */
export type Unjudged = [why: string, settle: string];
/** Each way a capability goes unjudged. */
const UNJUDGED: Record<string, Unjudged> = {
  limit: [OWN_LIMIT, "run it again with more of what ran out (ulimit -n, free memory, fewer threads)"],
  byFileCap: ["QEMU opens its uffd by a file capability this run lacks", AS_QEMU],
  impostor: [
    `${DEVICE} is not the userfaultfd device, or was not looked at: what QEMU 8.0+ makes of it decides`,
    "ask QEMU with --qemu",
  ],
  unversioned: [
    "no QEMU version was read: postcopy beside multifd works from QEMU 10.1 on",
    "ask QEMU with --qemu, or migrate with --migrate --parallel 4",
  ],
};
/**
 * What a context (context.ts, pid.ts) makes of a capability, QEMU's or another consumer's, on the routes
 * that consumer tries: why the run cannot judge it, false when the context refuses it, else null.
 */
export type Judging = (forQemu: boolean, routes: Route[]) => Unjudged | false | null;

/**
 * What each consumer can do here, judged from the checks and what they learnt: yes or no for each
 * capability, why for each one the run could not judge, and postcopy-ram for QEMU before and after 8.0.
 */
export function judge(checks: Check[], learnt: Learnt, f: Facts, context?: Context) {
  const { answers: a, trips, features, qemu } = learnt;
  const has = (name: string) => features !== null && (features & K.UFFD_FEATURE[name]) !== 0n;
  const passed = (id: string) => ["pass", "warn"].includes(checks.find((c) => c.id === id)?.status ?? "");
  const kernelMode = learnt.route !== "user-mode-only";
  /** One capability for one consumer: yes or no, and why it could not be judged. */
  const one = (cap: Capability, qemuAs: ConsumerName): [boolean, Unjudged | null] => {
    const need: Need = NEEDS[cap];
    const forQemu = need.consumer === "qemu";
    const consumer = forQemu ? qemuAs : (need.consumer as ConsumerName);
    const answer = a && answerOf(consumer, forQemu ? qemuAnswers(a, f, qemu) : a);
    const opens = answer === "ok";
    // A kernel-mode fault is proven only on a kernel-mode uffd: QEMU's own may be one (a file capability)
    // when ours is not.
    const servedTrip = (k: string) => trips[k]?.ok || (k === "kernel-write" && !kernelMode && opens);
    const served = need.trips.every(servedTrip);
    const ok = opens && served && need.checks.every(passed) && (need.features ?? []).every(has);
    // What the run knows refuses it is a no, whatever else it could not judge (a limit of its own hides no answer).
    const refused =
      (answer !== null && !opens && !LIMITS.includes(answer)) ||
      need.checks.some((id) => checks.find((c) => c.id === id)?.status === "fail") ||
      need.trips.some((k) => trips[k] && !servedTrip(k) && !limited(trips[k].detail));
    const limit =
      LIMITS.includes(answer ?? "") || ["round-trip", ...need.checks].some((id) => learnt.limited.includes(id));
    // QEMU's file capability opens a uffd where this run opened none: nothing about it could be checked.
    const byFileCap = opens && a !== null && !ROUTES.some((r) => a[r] === "ok");
    // QEMU 8.0+ opens whatever is at the device's path: only a failed open() sends it to the syscall.
    const impostor = opens && consumer === "qemu>=8.0" && a?.["device-node"] === "ENODEV";
    // What the context makes of it (--user: a capability it kept for QEMU; --pid: a filter's supervisor, the VM).
    const theirs = a && context?.judging?.map((j) => j(forQemu, CONSUMERS[consumer](a))).find((x) => x !== null);
    // The first of these that holds is why it could not be judged.
    const why = Object.entries({ limit, byFileCap, impostor }).find(([, holds]) => holds)?.[0];
    const yes = ok && !impostor && !theirs && theirs !== false;
    if (refused || theirs === false) return [false, null];
    return [yes, yes ? null : why ? UNJUDGED[why] : theirs || null];
  };
  /** Every capability, QEMU's judged for `qemuAs`: the deciding QEMU's consumer, or one generation's. */
  const all = (qemuAs: ConsumerName) => {
    const ok = {} as Record<Capability, boolean>;
    const unknown: Partial<Record<Capability, Unjudged>> = {};
    for (const cap of CAPABILITIES) {
      const [yes, why] = one(cap, qemuAs);
      ok[cap] = yes;
      if (why) unknown[cap] = why;
    }
    // --pid: the VM's memory needs what it is made of, and a memory backend the probe could not tell is unknown.
    ok["postcopy-ram"] &&= (context?.needs ?? []).every((cap) => ok[cap]);
    const vmUnknown = context?.checks?.find((c) => c.status === "skip");
    if (vmUnknown && ok["postcopy-ram"])
      [ok["postcopy-ram"], unknown["postcopy-ram"]] = [false, [vmUnknown.detail, vmUnknown.hint ?? ""]];
    // Beside multifd: postcopy-ram's answer, from a QEMU that can; unknown when it is, or the version is.
    const multifd = qemu?.version ? loadQemu().multifdWith(qemu.version) : null; // a QEMU read, when one was
    ok["postcopy-multifd"] = ok["postcopy-ram"] && multifd === true;
    const unversioned = ok["postcopy-ram"] && multifd === null ? UNJUDGED.unversioned : undefined;
    if (unknown["postcopy-ram"] ?? unversioned) unknown["postcopy-multifd"] = unknown["postcopy-ram"] ?? unversioned;
    // postcopy-ram's answer, or null when the run could not judge it.
    return { ok, unknown, ram: unknown["postcopy-ram"] ? null : ok["postcopy-ram"] };
  };
  const { ok, unknown, ram } = all(qemuConsumer(qemu));
  const generations = { "qemu<8.0": all("qemu<8.0").ram, "qemu>=8.0": all("qemu>=8.0").ram };
  return { ok, unknown, ram, undetermined: Object.keys(unknown) as Capability[], generations };
}
export type Judged = ReturnType<typeof judge>;

// ── Diagnosis: one typed table of causes, their gates and fixes ──

/** What the diagnosis reads beyond the facts, and only when a cause needs it. */
export type Evidence = { sysctlSource: { file: string; value: string } | null };
/** Where vm.unprivileged_userfaultfd is set at boot: systemd-sysctl's files merged by name, then /etc/sysctl.conf. */
function sysctlSource(sys: Sys) {
  const { readdirSync } = require("node:fs") as typeof import("node:fs");
  const list = (dir: string) => {
    try {
      return readdirSync(dir).map((n) => [n, `${dir}/${n}`] as const);
    } catch {
      return [];
    }
  };
  // The same name in an earlier directory wins; the files then apply in the order of their names.
  const files = new Map(SYSCTL_DIRS.flatMap(list).reverse());
  const order = [...files.keys()].filter((n) => n.endsWith(".conf")).sort();
  const settings = (file: string) => [...(sys.readText(file) ?? "").matchAll(SETS)].map((m) => ({ file, value: m[1] }));
  // Of every line that sets it, in the order they apply, the last is what boot leaves.
  return [...order.map((n) => files.get(n)!), "/etc/sysctl.conf"].flatMap(settings).at(-1) ?? null;
}
const SYSCTL_DIRS = ["/etc/sysctl.d", "/run/sysctl.d", "/usr/local/lib/sysctl.d", "/usr/lib/sysctl.d", "/lib/sysctl.d"];
const SETS = /^\s*-?\s*vm[./]unprivileged_userfaultfd\s*=\s*(\S+)/gm;
/**
 * What the diagnosis sees: the facts and evidence, what each route answered, the checks, the capabilities
 * that failed, the deciding QEMU, and --pid's checks of the running process and its VM.
 */
export type Seen = { f: Facts & Evidence; a: Answers; checks: Check[]; failing: Capability[]; qemu: Qemu | null } & {
  /** What the exit status stands for (--require): a cause of a capability few ask for shows only when asked. */
  required: Capability[];
};
type Gate = (s: Seen) => boolean;
export type Diagnosis = { cause: CauseId; summary: string; blocks: Capability[]; evidence: string[]; fix: string[] };
const missingOf = (checks: Check[]) => checks.flatMap((c) => c.missing ?? []);
// The gates more than one cause reads.
const selinuxDenies: Gate = ({ f, a }) => f.selinux === "enforcing" && [a.syscall, a["device-node"]].includes("EACCES");

/** Failing capabilities whose consumer takes `route` and is refused there: only those can a gate on it block. */
function through({ f, a, failing, qemu }: Seen, route: Route) {
  return failing.filter((cap) => {
    const answers = NEEDS[cap].consumer === "qemu" ? qemuAnswers(a, f, qemu) : a;
    return CONSUMERS[consumerOf(cap, qemu)](answers).includes(route) && answers[route] !== "ok";
  });
}
/** Failing capabilities whose route is among those `answers` refuse. */
const refusing = (s: Seen, answers: Partial<Answers>) => [
  ...new Set(ROUTES.flatMap((r) => (answers[r] ? through(s, r) : []))),
];
const ofQemu = (caps: Capability[]) => caps.filter((cap) => NEEDS[cap].consumer === "qemu");
/** What a cause can stand in the way of, by where its gate is. */
const BLOCKS = {
  kernel: (s: Seen) => s.failing,
  // A filter of the process's refuses routes by name; the probe's own is told on the syscall's, and by the checks
  // whose calls it refused.
  filtered: (s: Seen) =>
    s.f.filter
      ? refusing(s, s.f.filter.answers)
      : [...new Set([...(filterDeniesSyscall(s.f, s.a) ? through(s, "syscall") : []), ...needing(s, refusedCalls(s))])],
  profiled: (s: Seen) => refusing(s, s.f.apparmor?.denied ?? {}),
  device: (s: Seen) => through(s, "device"),
  syscall: (s: Seen) => through(s, "syscall"),
  "qemu-device": (s: Seen) => ofQemu(through(s, "device")),
  qemu: (s: Seen) => ofQemu(s.failing),
  multifd: ({ failing }: Seen) => failing.filter((cap) => cap === "postcopy-multifd"),
  criu: ({ failing }: Seen) => failing.filter((cap) => cap === "criu-lazy-pages"),
  "page-size": ({ failing }: Seen) => failing.filter((cap) => NEEDS[cap].checks.includes("page-size")),
  features: ({ checks, failing }: Seen) =>
    failing.filter((cap) => needed(cap).some((n) => missingOf(checks).includes(n))),
  note: () => [] as Capability[],
};
/** Failing capabilities that need one of `checks` passed. */
const needing = ({ failing }: Seen, checks: Check[]) =>
  failing.filter((cap) => NEEDS[cap].checks.some((id) => checks.some((c) => c.id === id)));
/**
 * Checks of QEMU's sequence failed by a call the probe's own seccomp filter refused: EPERM or ENOSYS where the kernel
 * answers neither (CRIU's EVENT_FORK aside, which is EPERM without CAP_SYS_PTRACE).
 */
const refusedCalls = ({ f, checks }: Seen) =>
  filtered(f) && !f.filter
    ? checks.filter(
        (c) => c.status === "fail" && ["EPERM", "ENOSYS"].includes(c.errno ?? "") && !NOT_FILTERS.includes(c.id),
      )
    : [];
const NOT_FILTERS = ["uffd-open", "criu-events"];
/** Where a cause's gate stands: its row in BLOCKS. */
type Place = keyof typeof BLOCKS;
/** The feature and ioctl names a capability's checks ask for. */
const needed = (cap: Capability) => {
  const need: Need = NEEDS[cap];
  const registrations = REGISTRATIONS.filter((r) => need.checks.includes(r.id)).map(needs);
  const features = registrations.reduce((mask, r) => mask | r.feature, featureMask(...(need.features ?? [])));
  return [...missingFeatures(0n, features), ...registrations.flatMap((r) => missingIoctls(0n, r.ioctls))];
};

/** The first kernel with each flag, feature or ioctl, per architecture where they differ. */
const SINCE: Record<string, string | Record<string, string>> = {
  UFFD_FEATURE_THREAD_ID: "4.14",
  // Write-protect needs the architecture's page-table bit: x86_64 had it first.
  UFFD_FEATURE_PAGEFAULT_FLAG_WP: { x86_64: "5.7", aarch64: "6.10" },
  UFFDIO_WRITEPROTECT: { x86_64: "5.7", aarch64: "6.10" },
  UFFD_USER_MODE_ONLY: "5.11",
  [DEVICE]: "6.1",
};
/** The architectures whose kernels can be built with pages larger than 4 KiB. */
const LARGER_PAGES = ["aarch64", "ppc64", "loongarch64"];
/** How to get `name`: the first Linux with it on this architecture (4.11 for the events and shmem/hugetlbfs). */
function boot(name: string, f: Facts) {
  const v = SINCE[name] ?? "4.11";
  const at = typeof v === "string" ? v : v[f.arch];
  if (!at) return `no Linux release for ${f.arch} has ${name} yet`;
  return `boot Linux ${at} or later for ${name} (this is ${f.kernel})`;
}

export const answered = ({ a }: Seen) => {
  const umo = a["user-mode-only"];
  const old = umo === "EINVAL" ? " (the flag came in Linux 5.11)" : "";
  return `userfaultfd(2): ${a.syscall}, with UFFD_USER_MODE_ONLY: ${umo}${old}`;
};
/** What the device node's open() answered this user. */
const openedAs = ({ f, a }: Seen) => `open as ${f.user}: ${a["device-node"]}`;
/** The probe's own seccomp filters, as its status shows them. */
const ownFilters = ({ f }: Seen) => `Seccomp: 2 in /proc/self/status (${f.seccompFilters} filters)`;
const SYSCTL = "sysctl -w vm.unprivileged_userfaultfd=1";
/** A pod template's seccomp profile, as kubectl patch sets it: PROFILE.json is in the kubelet's seccomp directory. */
const LOCALHOST = { type: "Localhost", localhostProfile: "PROFILE.json" };
const POD_PROFILE = JSON.stringify({
  spec: { template: { spec: { securityContext: { seccompProfile: LOCALHOST } } } },
});
const SECCOMP = [
  "docker run --security-opt seccomp=PROFILE.json ...   # PROFILE.json allowing userfaultfd",
  "podman run --security-opt seccomp=PROFILE.json ...",
  `kubectl patch deployment NAME -p '${POD_PROFILE}'   # its pods (Kubernetes)`,
  "systemctl edit UNIT   # a systemd unit: no SystemCallFilter= that denies userfaultfd",
];
const UDEV = `echo 'KERNEL=="userfaultfd", GROUP="kvm", MODE="0660"' > /etc/udev/rules.d/99-userfaultfd.rules`;
const CONTAINER = `docker run --device ${DEVICE} ...   # a container: or podman run --device`;

/** Where the running value comes from at boot. */
const sysctlFrom = ({ sysctlSource: from }: Evidence) =>
  from ? `${from.file} sets ${from.value}` : "no sysctl file sets it";
/** The file that makes the sysctl stick: named to sort after the file that sets it now, so it wins. */
function persistSysctl({ f }: Seen) {
  const from = f.sysctlSource?.file;
  if (from === "/etc/sysctl.conf")
    return "sed -i 's/^\\s*vm.unprivileged_userfaultfd\\s*=.*/vm.unprivileged_userfaultfd = 1/' /etc/sysctl.conf";
  const last = from?.split("/").at(-1) ?? "";
  const name = "99-userfaultfd.conf" > last ? "99-userfaultfd.conf" : `${last}-userfaultfd.conf`;
  return `echo vm.unprivileged_userfaultfd=1 > ${sh(`/etc/sysctl.d/${name}`)}`;
}
/** Lets QEMU's user into the device, least privilege first, with the commands this host has. */
function deviceAccess({ f }: Seen) {
  const user = f.uid === 0 && f.qemuUser ? f.qemuUser : f.user;
  const now = f.tools.includes("setfacl") ? [`setfacl -m ${sh(`u:${user}:rw`)} ${DEVICE}   # now; lost at reboot`] : [];
  const group = f.kvmGroup ? [] : ["groupadd -r kvm"];
  const join = `usermod -aG kvm ${sh(user)}   # QEMU started after this gets it`;
  const persist = f.tools.includes("udevadm")
    ? [UDEV, "udevadm control --reload && udevadm trigger --subsystem-match=misc"]
    : [`chgrp kvm ${DEVICE} && chmod 0660 ${DEVICE}   # no udev here: again after each boot`];
  return [...now, ...group, join, ...persist];
}
/** A node made 0600 is root's alone: a user other than root needs its way in too. */
const letIn = (s: Seen) => (s.f.miscMinor !== null && s.f.uid !== 0 ? deviceAccess(s) : null);
/** A line of a cause's evidence or fixes: fixed text, or text made from what the diagnosis sees (null: none). */
type Says = string | ((s: Seen) => string | string[] | null);
const spoken = (says: Says[], s: Seen) => says.flatMap((x) => (typeof x === "string" ? [x] : (x(s) ?? [])));
/** A cause: the gate that names it, where it stands (what it can block), if it is an upgrade, what it says and runs. */
export type Cause = { when: Gate; blocks: Place; upgrade?: Gate; summary: Says; evidence: Says[]; fix: Says[] };
/**
 * The decision table, in the order to act on the causes. An upgrade path (a newer kernel or QEMU)
 * comes after the fixes this host takes, whatever its place here.
 */
const CAUSES = {
  "target-page-size": {
    // QEMU: "Target page size bigger than host page size"
    when: ({ checks }) => checks.some((c) => c.id === "page-size" && c.status === "fail"),
    blocks: "page-size",
    upgrade: () => true,
    summary: "the guest's pages are larger than the host's: QEMU refuses postcopy",
    evidence: [({ checks }) => `page-size: ${checks.find((c) => c.id === "page-size")?.detail}`],
    fix: [
      ({ f }) =>
        LARGER_PAGES.includes(f.arch)
          ? `boot a ${f.arch} kernel built with pages at least as large as the guest's (this one's are ${f.pageSize} B)`
          : `none on ${f.arch}, whose pages are always ${f.pageSize} B: migrate this guest without postcopy`,
    ],
  },
  "no-kernel-support": {
    // ENOSYS with no filter to explain it, no device that opened, and no sysctl (which exists with CONFIG_USERFAULTFD).
    when: ({ f, a }) =>
      a.syscall === "ENOSYS" && !f.seccomp && !f.gvisor && a.device !== "ok" && f.unprivilegedUserfaultfd === null,
    blocks: "kernel",
    summary: "this kernel has no userfaultfd (CONFIG_USERFAULTFD off, or before 4.3)",
    evidence: [
      "userfaultfd(2): ENOSYS without a seccomp filter",
      ({ f }) => `kernel ${f.kernel}: no vm.unprivileged_userfaultfd, which a kernel with CONFIG_USERFAULTFD has`,
    ],
    fix: ["boot a kernel built with CONFIG_USERFAULTFD=y"],
  },
  gvisor: {
    when: ({ f, a }) => f.gvisor && a.syscall !== "ok",
    blocks: "kernel",
    summary: "gVisor's kernel does not implement userfaultfd",
    evidence: [({ f }) => `/proc/version: gVisor (release ${f.kernel})`, answered],
    fix: [
      "docker run --runtime=runc ...   # not --runtime=runsc",
      "kubectl edit pod ...   # drop runtimeClassName: gvisor",
    ],
  },
  selinux: {
    when: selinuxDenies,
    blocks: "kernel",
    summary: "SELinux is enforcing and denied userfaultfd (its [userfaultfd] anon-inode class, or the device)",
    evidence: ["/sys/fs/selinux/enforce: 1", ({ a }) => `${DEVICE}: ${a["device-node"]}`, answered],
    fix: ["ausearch -m avc -ts recent | audit2allow -M userfaultfd-local && semodule -i userfaultfd-local.pp"],
  },
  "devnode-missing": {
    when: ({ a }) => a["device-node"] === "ENOENT",
    blocks: "device",
    // A kernel without the device: a kernel upgrade, the path after the fixes this kernel takes.
    upgrade: ({ f }) => f.miscMinor === null,
    summary: `${DEVICE} is not there`,
    evidence: [
      ({ f }) =>
        f.miscMinor === null
          ? "no userfaultfd in /proc/misc: this kernel has no such device"
          : `/proc/misc: ${f.miscMinor} userfaultfd: the kernel has it, this /dev not`,
    ],
    fix: [
      ({ f }) =>
        f.miscMinor === null
          ? `${boot(DEVICE, f)}   # the upgrade path`
          : [CONTAINER, ...(f.ownDev ? [] : [`mknod -m 0600 ${DEVICE} c 10 ${f.miscMinor}   # this host`])],
      letIn,
    ],
  },
  "devnode-impostor": {
    // ENODEV: the probe found something else at the device's path, or a file system it does not enter.
    when: ({ a }) => a["device-node"] === "ENODEV",
    blocks: "device",
    summary: ({ f }) =>
      f.devnode
        ? `${DEVICE} is not the userfaultfd device: the probe did not open it`
        : `${DEVICE} was not looked at: the way to it crosses a file system the probe does not enter`,
    evidence: [
      ({ f }) =>
        f.devnode
          ? `${DEVICE}: ${f.devnode.mode}, ${f.devnode.kind}, not c 10:${f.miscMinor ?? "?"}`
          : `${DEVICE}: behind FUSE (which may never answer), or a mount the probe cannot place`,
    ],
    // Nothing to mend where nothing was looked at; no node replaced where it is the process's own (pasted
    // on the host, that would replace the host's).
    fix: [
      ({ f }) => (f.devnode ? CONTAINER : null),
      ({ f }) =>
        !f.devnode || f.miscMinor === null || f.ownDev
          ? null
          : `rm ${DEVICE} && mknod -m 0600 ${DEVICE} c 10 ${f.miscMinor}`,
      (s) => (s.f.devnode ? letIn(s) : null),
    ],
  },
  "libvirt-device-acl": {
    when: ({ f }) => libvirtHidesDevice(f),
    blocks: "qemu-device",
    summary: `libvirt's cgroup_device_acl leaves ${DEVICE} out of QEMU's /dev and device cgroup`,
    evidence: [({ f }) => `/etc/libvirt/qemu.conf: cgroup_device_acl = [${f.libvirt?.deviceAcl?.join(", ")}]`],
    fix: [
      `sed -i 's|^\\(\\s*cgroup_device_acl\\s*=\\s*\\[\\)|\\1"${DEVICE}", |' /etc/libvirt/qemu.conf   # keeps the rest`,
      `systemctl try-restart libvirtd virtqemud   # libvirt's own list: ${LIBVIRT_ACL.join(", ")}`,
    ],
  },
  "devnode-permission": {
    when: (s) => s.a["device-node"] === "EACCES" && !selinuxDenies(s) && !s.f.apparmor?.denied["device-node"],
    blocks: "device",
    summary: `${DEVICE}'s mode and owner do not let this user in`,
    evidence: [({ f }) => `${DEVICE}: ${f.devnode?.mode} ${f.devnode?.owner} ${f.devnode?.group}`, openedAs],
    fix: [deviceAccess],
  },
  "device-cgroup": {
    when: ({ f, a }) => a["device-node"] === "EPERM" || f.deviceCgroup?.allows === false,
    blocks: "device",
    summary: ({ f }) => `a device cgroup denies ${DEVICE} (c 10:${f.miscMinor}), whatever its mode`,
    evidence: [
      openedAs,
      ({ f }) =>
        f.deviceCgroup
          ? `${f.deviceCgroup.dir}/devices.list: no c 10:${f.miscMinor} rw`
          : "cgroup v2: a BPF device program",
    ],
    fix: [
      ({ f }) =>
        f.deviceCgroup &&
        `echo 'c 10:${f.miscMinor} rw' > ${sh(`${f.deviceCgroup.dir}/devices.allow`)}   # this cgroup, now`,
      CONTAINER,
      `systemctl set-property UNIT DeviceAllow='${DEVICE} rw'   # a systemd unit`,
    ],
  },
  seccomp: {
    // --pid: the process's filters, read and run; else the probe's own filter, told from how it answers.
    when: (s) =>
      s.f.filter
        ? Object.keys(s.f.filter.answers).length > 0
        : filterDeniesSyscall(s.f, s.a) || refusedCalls(s).length > 0,
    blocks: "filtered",
    summary: "a seccomp filter denies calls QEMU makes for its userfaultfd",
    evidence: [
      (s) =>
        s.f.filter
          ? Object.values(s.f.filter.says)
          : [
              ownFilters(s),
              ...(filterDeniesSyscall(s.f, s.a) ? [answered(s)] : []),
              ...refusedCalls(s).map((c) => `${c.id}: ${c.detail}`),
            ],
    ],
    fix: [({ f }) => f.filter?.fix ?? null, ...SECCOMP],
  },
  "user-namespace": {
    when: ({ f }) => f.unprivilegedUserfaultfd === 0 && f.capSysPtrace === true && f.userNamespace === true,
    blocks: "syscall",
    summary: "CAP_SYS_PTRACE is held only inside a user namespace, where userfaultfd ignores it",
    evidence: [({ f }) => `uid_map: ${f.uidMap} (the initial user namespace has 0 0 4294967295)`, answered],
    fix: [`${SYSCTL}   # on the host`, (s) => `${persistSysctl(s)}   # on the host`],
  },
  "unprivileged-userfaultfd": {
    // At 0 the sysctl refuses whoever lacks CAP_SYS_PTRACE (one held only in a user namespace is user-namespace's);
    // otherwise an EPERM that UFFD_USER_MODE_ONLY escapes tells it.
    when: ({ f, a }) =>
      f.unprivilegedUserfaultfd === 0
        ? f.capSysPtrace === false
        : a.syscall === "EPERM" && a["user-mode-only"] === "ok" && !f.userNamespace,
    blocks: "syscall",
    summary: "vm.unprivileged_userfaultfd is 0 and this user lacks CAP_SYS_PTRACE",
    evidence: [
      answered,
      ({ f }) => `vm.unprivileged_userfaultfd = ${f.unprivilegedUserfaultfd ?? "unreadable"} (${sysctlFrom(f)})`,
      ({ f }) => `CAP_SYS_PTRACE: not held by ${f.user} (uid ${f.uid})`,
      // The probe's own filter, which it cannot read: a process's, read and run, says so itself.
      ({ f, a }) =>
        filtered(f) && !f.filter && !filterDeniesSyscall(f, a)
          ? "Seccomp: 2: whether the filter denies userfaultfd(2) too shows once the sysctl allows it"
          : null,
    ],
    // A QEMU was read (the syscall said EPERM): its file capability, when only QEMU is refused.
    fix: [SYSCTL, persistSysctl, (s) => (ofQemu(BLOCKS.syscall(s)).length ? loadQemu().setcap(s) : null)],
  },
  "criu-needs-ptrace": {
    // Linux 5.5+: UFFD_FEATURE_EVENT_FORK needs CAP_SYS_PTRACE in the initial user namespace, whatever the sysctl.
    when: ({ checks }) => checks.some((c) => c.id === "criu-events" && /^UFFDIO_API.*: EPERM$/.test(c.detail)),
    blocks: "criu",
    summary: "CRIU's lazy pages ask for UFFD_FEATURE_EVENT_FORK, which needs CAP_SYS_PTRACE (initial user namespace)",
    evidence: [({ checks }) => `criu-events: ${checks.find((c) => c.id === "criu-events")?.detail}`],
    fix: ["criu lazy-pages --images-dir DIR ...   # as root on the host, whose CAP_SYS_PTRACE counts"],
  },
  "missing-feature": {
    when: ({ checks }) => missingOf(checks).length > 0,
    blocks: "features",
    upgrade: () => true,
    summary: "the kernel lacks a feature or ioctl a capability needs",
    evidence: [({ checks }) => checks.filter((c) => c.missing?.length).map((c) => `${c.id}: ${c.detail}`)],
    fix: [({ f, checks }) => [...new Set(missingOf(checks))].map((n) => boot(n, f))],
  },
  "hugepages-not-reserved": {
    when: ({ checks }) => checks.some((c) => c.id === "register-hugetlb" && c.status === "warn"),
    blocks: "note",
    summary: "no huge pages are reserved: hugetlbfs-backed guests get none",
    evidence: [({ f }) => `vm.nr_hugepages = ${f.nrHugepages}`],
    fix: [
      "sysctl -w vm.nr_hugepages=1024   # 2 GiB of 2 MiB pages: size it to the guests' RAM",
      "echo vm.nr_hugepages=1024 > /etc/sysctl.d/80-hugepages.conf",
    ],
  },
} satisfies Record<string, Cause>;
/** Every cause's id: this table's, those a QEMU read adds (qemu.ts), and the rows --pid adds (pid.ts, vm.ts). */
export type CauseId = keyof (typeof CAUSES &
  QemuCauses &
  typeof import("./pid.ts").CAUSES &
  typeof import("./vm.ts").CAUSES);
type QemuCauses = typeof import("./qemu.ts").CAUSES;
export const CAUSE_IDS = Object.keys(CAUSES) as CauseId[];

/**
 * Why, and what to run: every gate that holds and stands in the way of a capability that failed, the
 * fixes this host takes first and the upgrade paths after them, each fix once. Nothing that blocks
 * nothing is a cause, only a note (huge pages).
 */
export function diagnose(s: Seen, more: Record<string, Cause> = {}): Diagnosis[] {
  const rank = ([, c]: [CauseId, Cause]) => (c.blocks === "note" ? 2 : c.upgrade?.(s) ? 1 : 0);
  const given = new Set<string>();
  return (Object.entries({ ...CAUSES, ...more }) as [CauseId, Cause][])
    .filter(([, c]) => c.when(s) && (c.blocks === "note" || BLOCKS[c.blocks](s).length > 0))
    .sort((x, y) => rank(x) - rank(y))
    .map(([cause, c]) => {
      const [summary, evidence, fix] = [spoken([c.summary], s)[0], spoken(c.evidence, s), spoken(c.fix, s)];
      const blocks = BLOCKS[c.blocks](s);
      return { cause, summary, blocks, evidence, fix: fix.filter((x) => !given.has(x) && given.add(x)) };
    });
}

// ── Report: the pipeline, then one renderer ──

/**
 * A real judge beside the probe, --qemu's (QEMU's own answer, qemu.ts) or --migrate's (a migration,
 * migrate.ts): what will happen decides the capabilities it answers.
 */
export type RealAnswer = {
  /** How the verdict line names it: "QEMU 7.2.22's own answer". */
  whose: string;
  check: Check;
  /** The capabilities it answers: yes, no, or null when it could not tell (the run is then exit 2). */
  decides: Partial<Record<Capability, boolean | null>>;
  /** Why it could not tell, and what would settle it. */
  unanswered?: Unjudged;
  /** What it adds to the JSON document. */
  json: { qemu?: import("./qemu.ts").QemuAnswer; migration?: import("./migrate.ts").Migration };
};

/** Why the run could not answer what was asked, each reason with what would settle it: the exit status is then 2. */
function unanswered(opts: Options, judged: Judged, real: RealAnswer[], context?: Context): Unjudged[] {
  const why = real.flatMap((r) => (r.unanswered ? [r.unanswered] : []));
  // A real judge's answer settles what it answers, whatever the probe could not judge of it.
  for (const cap of opts.require.filter((c) => judged.unknown[c] && !real.some((r) => c in r.decides)))
    why.push([`${cap}: ${judged.unknown[cap]![0]}`, judged.unknown[cap]![1]]);
  return [...why, ...(context?.unanswered ?? [])];
}

/** The pipeline, without printing: checks, capabilities judged, the diagnosis, and the postcopy-probe/1 document. */
export async function probe(sys: Sys, facts: Facts, opts: Options, context?: Context) {
  const { checks, learnt } = await runChecks(sys, facts, opts, context);
  const judged = judge(checks, learnt, facts, context);
  // --qemu and --migrate: real judges beside the probe's own, and what will happen decides, unless a no stands.
  const asked = opts.qemu !== null || opts.migrate;
  const stands = asked ? loadQemu().standing(checks, facts, context) : null;
  const real = [
    ...(opts.qemu === null ? [] : [loadQemu().qemuAnswer(learnt.qemu, judged.ram, stands, opts.require)]),
    ...(opts.migrate ? [await loadMigrate().migrationAnswer(sys, opts, learnt.qemu, context)] : []),
  ];
  const decisive = Object.assign({ ...judged.ok }, ...real.map((r) => r.decides)) as Record<Capability, boolean>;
  for (const cap of stands ? CAPABILITIES : []) decisive[cap] &&= judged.ok[cap];
  const failing = CAPABILITIES.filter((c) => !judged.ok[c] && !judged.unknown[c]);
  // Where the sysctl is set, when the syscall said EPERM.
  const f: Facts & Evidence = {
    ...facts,
    sysctlSource: learnt.answers?.syscall === "EPERM" ? sysctlSource(sys) : null,
  };
  const seen = { f, checks, failing, qemu: learnt.qemu, required: opts.require };
  // The causes only a QEMU's version can be, when one was read (qemu.ts is loaded then).
  const qemuCauses = learnt.qemu?.version ? loadQemu().CAUSES : {};
  const why = unanswered(opts, judged, real, context);
  const known = why.length === 0;
  const trip = learnt.trips["kernel-write"];
  return {
    schema: SCHEMA,
    version: VERSION,
    /** The headline: a real judge's answer (--migrate, --qemu) if any, else the probe's for the QEMU that will run. */
    postcopy: known ? decisive["postcopy-ram"] : null,
    /** The real judge whose answer the headline is, when it is not the probe's own. */
    answeredBy:
      stands && !judged.ok["postcopy-ram"] ? undefined : real.findLast((r) => "postcopy-ram" in r.decides)?.whose,
    /** The probe's own answer, for which QEMU, on which route, and for QEMU before and after 8.0. */
    probe: {
      postcopy: judged.ram,
      qemu: learnt.qemu?.version ? `QEMU ${learnt.qemu.version}` : "QEMU",
      consumer: qemuConsumer(learnt.qemu),
      route: learnt.qemuRoute?.route ?? null,
      ...judged.generations,
    },
    host: seen.f as Record<string, unknown>,
    checks: [...checks, ...real.map((r) => r.check)],
    features: decodeFeatures(learnt.features),
    capabilities: judged.ok,
    /** Capabilities the run could not judge. */
    undetermined: judged.undetermined,
    diagnosis: learnt.answers ? diagnose({ ...seen, a: learnt.answers }, { ...qemuCauses, ...context?.causes }) : [],
    /** What the exit status stands for: --require's capabilities, postcopy-ram by default. */
    required: { capabilities: opts.require, ok: known ? opts.require.every((c) => decisive[c]) : null },
    /** The kernel-mode write trip decides for QEMU: its result and time, when it ran. */
    roundTrip: trip && { ok: Boolean(learnt.trips["user-read"]?.ok && trip.ok), ns: trip.ns },
    ...(Object.assign({}, ...real.map((r) => r.json)) as RealAnswer["json"]),
    ...(context?.process ? { context: { ...context.process, ...UNSHOWN, user: context.name } } : {}),
    /** Set when the probe could not answer what was asked: the exit status is then 2. */
    ...(known ? {} : { error: `could not answer what was asked: ${why.map(([w]) => w).join("; ")}` }),
    /** With `error`: what would settle each thing the run could not answer. */
    ...(known ? {} : { settle: why.map(([, settle]) => settle) }),
  };
}
/** The report, and what main() adds to it: --bench's figures. */
export type Report = Awaited<ReturnType<typeof probe>> & { bench?: import("./bench.ts").Bench | { error: string } };
/** What --pid read of the process but the report leaves out: its arguments, mounts and files can be large. */
const UNSHOWN = { cmdline: undefined, mounts: undefined, files: undefined };

const COLORS: Record<Status, number> = { pass: 32, warn: 33, fail: 31, skip: 90 };
export const STATUSES = Object.keys(COLORS) as Status[];
const paint = (on: boolean, code: number, text: string) => (on ? `\x1b[${code}m${text}\x1b[0m` : text);
const WIDTH = 72;

/** The verdict as a sentence: whose answer, for which QEMU, yes or no, for whom. */
function verdict(report: Report, yesNo: (yes: boolean, text: string) => string) {
  const { host, probe: own, answeredBy, postcopy } = report;
  const word = (yes: boolean | null) => yesNo(yes === true, yes ? "SUPPORTED" : "NOT SUPPORTED");
  const whose = answeredBy ?? `${own.qemu} postcopy-ram`;
  const line = (answer: string) => `Postcopy live migration (${whose}): ${answer} for ${host.user} (uid ${host.uid})`;
  // Could not answer: never a yes or a no beside it, but why, and what would settle it.
  if (report.error) {
    const why = report.error.replace(/^could not answer what was asked: /, "");
    return [`${line("UNKNOWN")}: ${why}`, ...(report.settle ?? []).map((s) => `  To settle it: ${s}`)];
  }
  const [before, after] = [own["qemu<8.0"], own["qemu>=8.0"]];
  // Without a real judge's answer, QEMU before and after 8.0 may differ: both are said, in one line if no version is
  // known.
  const split = !answeredBy && before !== null && after !== null && before !== after;
  const unversioned = split && own.qemu === "QEMU";
  const unjudged = !answeredBy && report.undetermined.includes("postcopy-ram");
  const both = `${word(after)} for QEMU 8.0 and later, ${word(before)} before 8.0 (no QEMU version known),`;
  const answer = unversioned ? both : unjudged ? "UNKNOWN" : word(postcopy);
  const [other, theirs] = own.consumer === "qemu<8.0" ? ["8.0 and later", after] : ["before 8.0", before];
  return split && !unversioned ? [line(answer), `  QEMU ${other} would be ${word(theirs)} here`] : [line(answer)];
}

/** The human report, in the style of virt-host-validate: every string in it shown(). */
export function renderHuman(raw: Report, opts: Pick<Options, "quiet" | "color">): string {
  const report: Report = JSON.parse(JSON.stringify(raw), (_, v) => (typeof v === "string" ? shown(v) : v));
  const { host, checks } = report;
  const yesNo = (yes: boolean, text: string) => paint(opts.color, yes ? COLORS.pass : COLORS.fail, text);
  const count = (s: Status) => `${s}=${checks.filter((c) => c.status === s).length}`;
  const lines: string[] = [];
  if (!opts.quiet)
    lines.push(`postcopy-probe ${report.version}: Linux ${host.kernel} ${host.arch}, ${host.user} (uid ${host.uid})`);
  for (const c of checks.filter((c) => !opts.quiet || c.status === "warn" || c.status === "fail")) {
    const status = paint(opts.color, COLORS[c.status], c.status.toUpperCase());
    lines.push(`${`Checking for ${c.title}`.padEnd(WIDTH)}: ${status}${c.detail ? ` (${c.detail})` : ""}`);
  }
  if (!opts.quiet) lines.push("", "Capabilities:");
  for (const [name, yes] of opts.quiet ? [] : Object.entries(report.capabilities)) {
    const unknown = report.undetermined.includes(name as Capability);
    lines.push(`  ${name.padEnd(22)}${unknown ? "unknown" : yesNo(yes, yes ? "yes" : "no")}`);
  }
  if (report.bench) lines.push("", loadBench().benchLine(report.bench));
  if (!opts.quiet) lines.push("", STATUSES.map(count).join(", "));
  if (report.diagnosis.length) lines.push("", "Why / Fix:");
  for (const d of report.diagnosis) {
    const blocks = d.blocks.length ? ` [blocks ${d.blocks.join(", ")}]` : " [a note: it blocks nothing]";
    lines.push(`  ${d.cause}: ${d.summary}${blocks}`, ...d.evidence.map((e) => `    because ${e}`));
    lines.push(...d.fix.map((f) => `    $ ${f}`));
  }
  lines.push(...verdict(report, yesNo));
  const own = report.probe.postcopy;
  if (report.answeredBy && report.postcopy !== null && own !== null && own !== report.postcopy) {
    const probeSays = `The probe's own answer: ${own ? "SUPPORTED" : "NOT SUPPORTED"}`;
    lines.push(yesNo(false, `${probeSays}; ${report.answeredBy} disagrees, and decides`));
  }
  const { capabilities: wanted, ok } = report.required;
  const required = ok === null ? "UNKNOWN" : yesNo(ok, ok ? "YES" : "NO");
  if (wanted.join() !== "postcopy-ram") lines.push(`Required ${wanted.join(", ")}: ${required}`);
  return `${lines.join("\n")}\n`;
}

/**
 * The report as the postcopy-probe/1 JSON document. Beyond JSON's own escapes, what a terminal may act on
 * (DEL, C1 controls, format and line-separator characters) is escaped too: the document shown on a terminal
 * shows a target's bytes escaped, and a program that decodes it gets the same strings.
 */
export const renderJson = (report: Report) =>
  `${JSON.stringify(report, null, 2).replace(/[\u007f-\u009f\p{Cf}\p{Zl}\p{Zp}]/gu, unicodeEscapes)}\n`;
const unicodeEscapes = (c: string) =>
  c
    .split("")
    .map((u) => `\\u${u.charCodeAt(0).toString(16).padStart(4, "0")}`)
    .join("");

type Format = "human" | "json" | "prometheus";
const RENDERERS: Record<Format, (report: Report, opts: Options) => string> = {
  human: renderHuman,
  json: renderJson,
  prometheus: (report) => loadTextfile().renderPrometheus(report),
};

/** The document of a run that could not answer: JSON and Prometheus readers still get one; a human gets stderr. */
export function errorDocument(format: Format, error: string) {
  const partial = { schema: SCHEMA, version: VERSION, error } as unknown as Report;
  return format === "human" ? "" : format === "json" ? renderJson(partial) : loadTextfile().renderPrometheus(partial);
}

// ── Command line: options as data, main() and the exit status ──

const BENCH_FAULTS = 10000;
/** At most 2 GiB of 4 KiB pages in one --bench. */
const BENCH_MAX = 500000;

/** `value` if it is one of `valid`, else a UsageError naming the valid ones. */
function oneOf<T extends string>(value: string, valid: readonly T[], what: string): T {
  if (!valid.includes(value as T)) throw new UsageError(`Unknown ${what} ${quoted(value)}: use ${valid.join(", ")}`);
  return value as T;
}
/** A whole number `ok` accepts, exact for any input (BigInt: no 32-bit wrap), else a UsageError saying why. */
function number(value: string, what: string, must: string, ok: (n: bigint) => boolean) {
  const n = /^[0-9]{1,20}$/.test(value) ? BigInt(value) : -1n;
  if (n < 0n || !ok(n)) throw new UsageError(`Invalid ${what} ${quoted(value)}: ${must}`);
  return Number(n);
}
const isPageSize = (n: bigint) => n > 0n && n <= 1n << 30n && !(n & (n - 1n));
const pageSizeOf = (v: string) => number(v, "target page size", "a power of two in bytes, such as 4096", isPageSize);
const pidOf = (v: string) => number(v, "pid", "a process id", (n) => n > 0n && n < 1n << 22n);
const isFaultCount = (n: bigint) => n >= 2n && n <= BENCH_MAX;
const channelsOf = (v: string) => number(v, "channel count", "from 1 to 64", (n) => n >= 1n && n <= 64n);
const faultsOf = (v: string) =>
  v ? number(v, "fault count", `a whole number from 2 to ${BENCH_MAX}`, isFaultCount) : BENCH_FAULTS;

const defaults = () => ({
  format: "human" as Format,
  require: ["postcopy-ram"] as Capability[], // the capabilities the exit status stands for
  quiet: false,
  targetPageSize: 4096,
  boundMs: BOUND_MS,
  bench: 0, // faults to serve in --bench; 0 when not benchmarking
  user: null as string | null, // --user: answer for this user, from a child with its ids
  pid: null as number | null, // --pid: answer for this running QEMU, from a child in its context
  qemu: null as string | true | null, // --qemu [PATH]: ask that QEMU too (true: look for one)
  qemuMs: 5000, // how long QEMU gets to answer before it is killed
  migrate: false, // --migrate: a real postcopy migration between two QEMUs here, too (migrate.ts)
  migrateMiB: 256, // its guest's RAM
  migrateMs: 30_000, // its bound, start to end
  parallel: 0, // --parallel N: its multifd channels
  output: null as string | null, // --output FILE: the report goes there, whole or not at all
  help: false,
  version: false,
});

type Parsed = ReturnType<typeof defaults>;
/** One option: its names, its value (in brackets when optional), the help, and what it sets. */
type Option = [names: string, value: string, help: string, set: (o: Parsed, v: string) => unknown];
const FORMATS = Object.keys(RENDERERS) as Format[];
const capabilityList = (v: string) => [...new Set(v.split(",").map((c) => oneOf(c, CAPABILITIES, "capability")))];
/** The command line, as data. */
const OPTIONS: Option[] = [
  ["--json", "", "print the postcopy-probe/1 JSON document, nothing else", (o) => (o.format = "json")],
  ["--format", "FORMAT", "human (default), json, or prometheus", (o, v) => (o.format = oneOf(v, FORMATS, "format"))],
  ["--output", "FILE", "write the report to FILE whole (a temporary file, renamed)", (o, v) => (o.output = v)],
  ["--require", "CAP[,CAP...]", "exit status for these capabilities", (o, v) => (o.require = capabilityList(v))],
  ["-q, --quiet", "", "print only warnings, failures, why and the verdict", (o) => (o.quiet = true)],
  ["--user", "NAME|UID", "answer for that user (as root): QEMU's user", (o, v) => (o.user = v)],
  ["--pid", "PID", "answer for that running QEMU and its VM (as root)", (o, v) => (o.pid = pidOf(v))],
  ["--qemu", "[PATH]", "ask the installed QEMU (or PATH) over QMP too", (o, v) => (o.qemu = v || true)],
  ["--migrate", "", "also migrate a 256 MiB VM between two QEMUs here (30 s at most)", (o) => (o.migrate = true)],
  ["--parallel", "N", "--migrate with N multifd channels: postcopy-multifd", (o, v) => (o.parallel = channelsOf(v))],
  ["--target-page-size", "N", "the guest's page size (default 4096)", (o, v) => (o.targetPageSize = pageSizeOf(v))],
  ["--bench", "[N]", `also serve N faults (default ${BENCH_FAULTS}) at full speed`, (o, v) => (o.bench = faultsOf(v))],
  ["-h, --help", "", "this text", (o) => (o.help = true)],
  ["-V, --version", "", "the version", (o) => (o.version = true)],
];
const usageOf = ([names, value]: Option) => `[${names.split(", ").at(-1)}${value ? ` ${value}` : ""}]`;
const USAGE = `Usage: postcopy-probe ${OPTIONS.map(usageOf).join(" ")}`;
const HELP = `${USAGE}

Tells whether QEMU can do userfaultfd postcopy live migration on this host, in this context.

${OPTIONS.map(([names, value, help]) => `  ${`${names} ${value}`.padEnd(24)}${help}`).join("\n")}

Exit status: 0 postcopy supported, 1 not supported, 2 the probe could not answer what was asked.`;

/** Parses argv (without the runtime and script). Throws UsageError for anything it does not know. */
export function parseArgs(argv: string[], env: Record<string, string | undefined> = process.env, tty = false) {
  const opts = { ...defaults(), color: tty && !env.NO_COLOR && env.TERM !== "dumb" };
  for (let i = 0; i < argv.length; i++) {
    const [name, inline] = argv[i].startsWith("--") ? argv[i].split(/=(.*)/s) : [argv[i], undefined];
    const option = OPTIONS.find(([names]) => names.split(", ").includes(name));
    if (!option) throw new UsageError(`Unknown option ${quoted(argv[i])}`);
    const [, value, , set] = option;
    if (!value && inline !== undefined) throw new UsageError(`Option "${name}" takes no value: ${quoted(argv[i])}`);
    // An optional value is the next argument only when that is not an option itself.
    const optional = value.startsWith("[");
    const next = value && inline === undefined && !(optional && argv[i + 1]?.startsWith("-")) ? argv[++i] : undefined;
    if (value && !optional && (inline ?? next) === undefined) throw new UsageError(`Option "${name}" needs a value`);
    set(opts, inline ?? next ?? "");
  }
  // --parallel migrates with multifd: that migration answers postcopy-multifd, which the exit status is then for.
  if (opts.parallel && !argv.some((a) => a.startsWith("--require"))) opts.require = ["postcopy-multifd"];
  if (opts.output === "") throw new UsageError(`Option "--output" needs a file name, not ""`);
  if (opts.pid !== null && opts.qemu !== null)
    throw new UsageError(
      "--qemu cannot answer for --pid: a process's QEMU is never run to ask it; use --pid with --migrate",
    );
  // A relative path is from where the probe was started; a QEMU named without a path is looked up on $PATH.
  const here = (path: string) => (path.startsWith("/") ? path : `${workingDirectory(env)}/${path}`);
  const named = typeof opts.qemu === "string" && !opts.qemu.includes("/");
  const qemu = named ? (Bun.which(opts.qemu as string, { PATH: absolutePath(env) }) ?? opts.qemu) : opts.qemu;
  return {
    ...opts,
    output: opts.output && here(opts.output),
    qemu: typeof qemu === "string" ? here(qemu) : qemu,
    migrate: opts.migrate || opts.parallel > 0,
  };
}

/** The format asked for, read leniently: an error document must match it even when the command line is wrong. */
function formatAsked(argv: string[]): Format {
  const at = argv.findLastIndex((a) => a.startsWith("--json") || a.startsWith("--format"));
  const arg = argv[at] ?? "";
  const value = arg.startsWith("--json") ? "json" : arg.includes("=") ? arg.split("=")[1] : argv[at + 1];
  return FORMATS.includes(value as Format) ? (value as Format) : "human";
}

/** Started with stdout closed, Bun puts /dev/null there, close-on-exec: no stdout it inherited ever is. */
export const stdoutClosed = (sys: Sys) =>
  (Number.parseInt(field(sys.readText("/proc/self/fdinfo/1"), "flags") ?? "0", 8) & K.O_CLOEXEC) !== 0;
/** Writes the whole document to stdout, or to `output` whole (textfile.ts); throws when it cannot. */
function emit(sys: Sys | null, text: string, output: string | null) {
  if (!text) return;
  if (output) return loadTextfile().writeWhole(output, text);
  if (!sys) return console.log(text.trimEnd());
  if (stdoutClosed(sys)) throw new Error("Cannot write the report: stdout is closed");
  const bytes = new TextEncoder().encode(text);
  for (let at = 0, tries = 0; at < bytes.length; ) {
    const r = sys.write(1, bytes.subarray(at));
    if (r.ret > 0) at += r.ret;
    else if (["EINTR", "EAGAIN"].includes(errnoName(r.errno)) && tries++ < 1000) Bun.sleepSync(1);
    else throw new Error(`Cannot write the report to stdout: ${errnoName(r.errno)}`);
  }
}

/** Each option's own file, loaded on first use only: a run that does not ask for it does not pay for it. */
const loadContext = () => require("./context.ts") as typeof import("./context.ts");
const loadBench = () => require("./bench.ts") as typeof import("./bench.ts");
const loadTextfile = () => require("./textfile.ts") as typeof import("./textfile.ts");
const loadMigrate = () => require("./migrate.ts") as typeof import("./migrate.ts");

/** The CLI: parse, facts, checks, capabilities, diagnosis, render, exit status; --bench after the probe. */
export async function main(argv = process.argv.slice(2)) {
  // Nothing is looked up where the probe was started (a tenant's directory, for root): from here on it works in /,
  // and a relative path it was given is from there (PWD, which its children get).
  process.env.PWD = workingDirectory();
  process.chdir("/");
  // --migrate starts each QEMU through the probe itself, which then becomes that QEMU (migrate.ts).
  if (process.env.POSTCOPY_PROBE_LAUNCH) return loadMigrate().launch(argv);
  let [sys, asked]: [Sys | null, Options | null] = [null, null];
  try {
    const opts = parseArgs(argv, process.env);
    asked = opts;
    if (process.platform !== "linux")
      throw new Error(`Not Linux: userfaultfd is a Linux interface (this is "${process.platform}")`);
    sys = K.loadSys();
    if (opts.help || opts.version) return emit(sys, `${opts.help ? HELP : VERSION}\n`, null);
    // --user and --pid: the whole probe runs again in a child that takes on QEMU's context (context.ts). The
    // parent writes the child's document (to --output too: it is never the child's to write) and takes its status.
    const taken = opts.user !== null || opts.pid !== null ? await loadContext().takeOn(sys, opts, argv) : undefined;
    if (taken && "out" in taken) {
      emit(sys, taken.out, opts.output);
      process.exitCode = taken.code;
      return;
    }
    const context = taken;
    opts.color = !process.env.NO_COLOR && process.env.TERM !== "dumb" && sys.isatty(1) === 1 && !opts.output;
    const facts = readFacts(sys, context?.device, context?.facts);
    const report: Report = await probe(sys, facts, opts, context);
    if (opts.bench) report.bench = await loadBench().bench(sys, facts, report, opts);
    emit(sys, RENDERERS[opts.format](report, opts), opts.output);
    if (report.error) console.error(`postcopy-probe: ${shown(report.error)}`);
    process.exitCode = report.error ? 2 : report.required.ok ? 0 : 1;
  } catch (e) {
    const usage = (e as Error).name === "UsageError" || e instanceof UsageError;
    console.error(`postcopy-probe: ${shown((e as Error).message)}${usage ? `\n${USAGE}` : ""}`);
    try {
      emit(sys, errorDocument(formatAsked(argv), (e as Error).message), asked?.output ?? null);
    } catch {
      // the message above already says why
    }
    process.exitCode = 2;
  }
}

if (import.meta.main) main();
