#!/usr/bin/env bun
/**
 * postcopy-probe: can QEMU do userfaultfd-based postcopy live migration on this host, in this
 * context — and if not, why, and what to run. It runs QEMU's own postcopy_ram_supported_by_host()
 * sequence (and what QEMU 8.0+ adds) against the real kernel, through ffi.ts.
 *
 * ```sh
 * bun probe.ts            # report; exit 0 supported, 1 not, 2 could not run
 * bun probe.ts --json     # the postcopy-probe/1 JSON document
 * ```
 *
 * The file reads in the order the data flows, one banner per stage:
 *   Facts          read-only host context                         readFacts()
 *   Checks         QEMU's sequence, one row per check             CHECKS, runChecks()
 *   Round trips    real faults served, and --bench                TRIPS, serveFaults(), bench()
 *   Capabilities   what each consumer can do here                 capabilities()
 *   Diagnosis      gates as named predicates, causes and fixes    GATES, CAUSES, diagnose()
 *   Report         the whole probe as data, then one renderer     probe(), RENDERERS
 *   Command line   options as data, main() and the exit status    OPTIONS, parseArgs(), main()
 * What talks to QEMU itself (--qemu) lives in qemu.ts, loaded only when asked for.
 */
import type { R, Sys } from "./ffi.ts";
import * as K from "./ffi.ts";

export const VERSION = "0.1.0";
export const SCHEMA = "postcopy-probe/1";
export type Status = "pass" | "warn" | "fail" | "skip";
/** One line of the report. A check never prints and never throws for a kernel answer. */
export type Check = { id: string; title: string; status: Status; detail: string; [more: string]: unknown };
/** What the command line asks for; the renderers and checks read it. */
export type Options = Omit<ReturnType<typeof parseArgs>, "help" | "version">;
const { errnoName } = K;

// ── Facts: read-only host context ──

const DEVICE = "/dev/userfaultfd";
const CAP_SYS_PTRACE = 19n;
const QEMU_USERS = ["qemu", "libvirt-qemu"];
/** The rows of a colon-separated database such as /etc/passwd or /etc/group. */
const rows = (sys: Sys, path: string) => (sys.readText(path) ?? "").split("\n").map((l) => l.split(":"));
/** `crw-------` for a character device with mode 0600. */
const modeString = (mode: number) =>
  ((mode & 0o170000) === 0o020000 ? "c" : "-") +
  [..."rwxrwxrwx"].map((c, i) => (mode & (0o400 >> i) ? c : "-")).join("");
/** A number from a one-value file such as /proc/sys/vm/nr_hugepages, or null when unreadable. */
const readNumber = (sys: Sys, path: string) => {
  const text = sys.readText(path);
  return text === null ? null : Number(text.trim());
};
/** The value after `key:` in a /proc file such as /proc/meminfo. */
const field = (text: string | null, key: string) => text?.match(new RegExp(`^${key}:\\s*(.*)$`, "m"))?.[1] ?? null;
/** The name for an id in /etc/passwd or /etc/group, or the number as text. */
const nameOf = (table: string[][], id: number) => table.find((r) => r[2] === String(id))?.[0] ?? String(id);
const numberOrNull = (text: string | null) => (text === null ? null : Number(text));

/** Read-only host context: every field is read from the host, nothing is inferred from versions. */
export type Facts = ReturnType<typeof readFacts>;

/** Reads the facts the checks and the diagnosis need. */
export function readFacts(sys: Sys) {
  const meminfo = sys.readText("/proc/meminfo");
  const hugeKb = field(meminfo, "Hugepagesize");
  const uid = process.getuid!();
  const status = sys.readText("/proc/self/status");
  const uidMap = sys.readText("/proc/self/uid_map")?.trim().split("\n")[0].trim().replace(/\s+/g, " ") ?? "";
  const node = sys.stat(DEVICE);
  const misc = sys.readText("/proc/misc")?.match(/^\s*(\d+) userfaultfd$/m);
  const enforce = sys.readText("/sys/fs/selinux/enforce")?.trim();
  const version = `${sys.readText("/proc/version") ?? ""}`;
  const passwd = rows(sys, "/etc/passwd");
  const owners = { owner: nameOf(passwd, node.uid), group: nameOf(rows(sys, "/etc/group"), node.gid) };
  return {
    kernel: sys.readText("/proc/sys/kernel/osrelease")?.trim() ?? "unknown",
    arch: K.arch!.name,
    pageSize: sys.pageSize(),
    hugePageSize: hugeKb === null ? null : Number.parseInt(hugeKb, 10) * 1024,
    nrHugepages: readNumber(sys, "/proc/sys/vm/nr_hugepages"),
    freeHugepages: numberOrNull(field(meminfo, "HugePages_Free")),
    uid,
    user: nameOf(passwd, uid),
    // Absent: no CONFIG_USERFAULTFD, or a kernel before 5.2.
    unprivilegedUserfaultfd: readNumber(sys, "/proc/sys/vm/unprivileged_userfaultfd"),
    capSysPtrace: (BigInt(`0x${field(status, "CapEff") ?? "0"}`) >> CAP_SYS_PTRACE) % 2n === 1n,
    seccomp: numberOrNull(field(status, "Seccomp")), // 0 none, 1 strict, 2 filter
    seccompFilters: numberOrNull(field(status, "Seccomp_filters")),
    uidMap,
    userNamespace: uidMap !== "0 0 4294967295",
    // As `ls -l` shows it; null when there is no such node.
    devnode: node.ret < 0 ? null : { mode: modeString(node.mode), ...owners },
    // The kernel has the device even when this /dev lacks it (a container).
    miscMinor: misc ? Number(misc[1]) : null,
    selinux: enforce === "1" ? "enforcing" : enforce === "0" ? "permissive" : null,
    // gVisor's Sentry: "-gvisor" in the release, or the fixed 2016 build date of its /proc/version.
    gvisor: /gvisor/i.test(version) || version.includes("Sun Jan 10 15:06:54 PST 2016"),
    // The user QEMU usually runs as here, when there is one.
    qemuUser: QEMU_USERS.find((u) => passwd.some((r) => r[0] === u)) ?? null,
  };
}

// ── Checks: QEMU's sequence, one row per check ──

/** How this context gets a uffd, as QEMU 8.0+ does: the device first, then the syscall. */
type Route = "device" | "syscall" | "user-mode-only";
/** What the checks share: the Sys, the facts, and what earlier checks learnt. */
export type Probe = {
  sys: Sys;
  facts: Facts;
  opts: Options;
  route: Route | null;
  umo: boolean;
  features: bigint | null;
};

const UFFD_FLAGS = K.O_CLOEXEC | K.O_NONBLOCK;
/** A new uffd through one route; the device's own fd is closed before returning. */
function openRoute(sys: Sys, route: Route): R {
  if (route === "syscall") return sys.userfaultfd(UFFD_FLAGS);
  if (route === "user-mode-only") return sys.userfaultfd(UFFD_FLAGS | K.UFFD_USER_MODE_ONLY);
  const dev = sys.open(DEVICE, K.O_RDWR | K.O_CLOEXEC);
  if (dev.ret < 0) return dev;
  try {
    return sys.ioctl(dev.ret, K.USERFAULTFD_IOC_NEW, UFFD_FLAGS);
  } finally {
    sys.close(dev.ret);
  }
}
/** The route faults can be served on: QEMU's, else a user-mode-only uffd (which shows what it lacks). */
const servingRoute = (p: Probe): Route | null => p.route ?? (p.umo ? "user-mode-only" : null);
/** A check's extra field by the check's id: uffd-open's `routes`, round-trip's `trips`. */
const extra = <T>(checks: Check[], id: string, key: string) => (checks.find((c) => c.id === id)?.[key] ?? {}) as T;
/** What uffd-open found for each route: "ok" or an errno name. */
const routesOf = (checks: Check[]) => extra<Record<string, string>>(checks, "uffd-open", "routes");
/** The round trips' results by key. */
const tripsOf = (checks: Check[]) => extra<Record<string, TripResult>>(checks, "round-trip", "trips");

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

type Head = Pick<Check, "id" | "title">;
const result = (head: Head, status: Status, detail: string, more: Partial<Check> = {}): Check => {
  return { id: head.id, title: head.title, status, detail, ...more };
};
/** A failed call as a check result: `UFFDIO_REGISTER: EINVAL`. */
const failed = (head: Head, call: string, r: R, more: Partial<Check> = {}) =>
  result(head, "fail", `${call}: ${errnoName(r.errno)}`, { errno: errnoName(r.errno), ...more });
/** The failed check when the kernel lacks features of `wanted` (QEMU's "Missing userfault features"), or null. */
function lacking(head: Head, offered: bigint, wanted: bigint) {
  const missing = missingFeatures(offered, wanted);
  return missing.length ? result(head, "fail", `kernel does not offer ${missing.join(", ")}`, { missing }) : null;
}

function checkPageSize(p: Probe, head: Head): Check {
  const { pageSize } = p.facts;
  const target = p.opts.targetPageSize;
  // QEMU: "Target page size bigger than host page size"
  const status = target > pageSize ? "fail" : "pass";
  return result(head, status, `host ${pageSize}, target ${target}`, { pageSize, targetPageSize: target });
}

function checkOpen(p: Probe, head: Head): Check {
  const routes: Record<string, string> = {};
  for (const route of ["device", "syscall", "user-mode-only"] as const) {
    const r = openRoute(p.sys, route);
    routes[route] = r.ret < 0 ? errnoName(r.errno) : "ok";
    if (r.ret >= 0) p.sys.close(r.ret);
  }
  const umo = routes["user-mode-only"];
  const said = `${DEVICE}: ${routes.device}, userfaultfd(2): ${routes.syscall}, user-mode-only: ${umo}`;
  p.route = routes.device === "ok" ? "device" : routes.syscall === "ok" ? "syscall" : null;
  p.umo = routes["user-mode-only"] === "ok";
  if (!p.route) return result(head, "fail", said, { routes, errno: routes.syscall });
  if (routes.syscall === "ok") return result(head, "pass", said, { routes, route: p.route });
  const older = "QEMU older than 8.0 only uses the syscall and will fail";
  return result(head, "warn", `${said}; ${older}`, { routes, route: p.route });
}

/** UFFDIO_API asking for `features` on a throw-away uffd: the reply, or the failed check. */
function handshake(p: Probe, head: Head, features: bigint, call = "UFFDIO_API"): BigUint64Array | Check {
  const absent = lacking(head, p.features ?? features, features);
  if (absent) return absent;
  const fd = openRoute(p.sys, p.route!);
  if (fd.ret < 0) return failed(head, "userfaultfd", fd);
  try {
    const api = apiStruct(features);
    const r = p.sys.ioctl(fd.ret, K.UFFDIO_API, api);
    return r.ret < 0 ? failed(head, call, r) : api;
  } finally {
    p.sys.close(fd.ret);
  }
}
/** QEMU's ufd_check_and_apply() requires REGISTER and UNREGISTER: "Missing userfault features". */
function registerIoctls(head: Head, api: BigUint64Array, detail: string): Check {
  const missing = missingIoctls(api[2], ["REGISTER", "UNREGISTER"]);
  if (!missing.length) return result(head, "pass", detail);
  return result(head, "fail", `${detail}; Missing userfault features: ${missing.join(", ")}`, { missing });
}

function checkApi(p: Probe, head: Head): Check {
  // QEMU's receive_ufd_features(): ask for nothing to learn what is offered.
  // A failure here is QEMU's "Userfault feature detection failed".
  const api = handshake(p, head, 0n);
  if (!(api instanceof BigUint64Array)) return api;
  p.features = api[1];
  return registerIoctls(head, api, `features 0x${api[1].toString(16)}, ioctls 0x${api[2].toString(16)}`);
}

function checkFeatures(p: Probe, head: Head): Check {
  // QEMU's ufd_check_and_apply(): THREAD_ID when offered, for postcopy-blocktime.
  const asked = p.features! & K.UFFD_FEATURE.THREAD_ID;
  const api = handshake(p, head, asked);
  if (!(api instanceof BigUint64Array)) return api;
  const applied = registerIoctls(head, api, "UFFD_FEATURE_THREAD_ID applied");
  if (asked || applied.status === "fail") return applied;
  const missing = ["UFFD_FEATURE_THREAD_ID"];
  return result(head, "warn", "UFFD_FEATURE_THREAD_ID not offered: no postcopy-blocktime", { missing });
}

const CRIU_EVENTS = featureMask("EVENT_FORK", "EVENT_REMAP", "EVENT_UNMAP", "EVENT_REMOVE");
function checkCriu(p: Probe, head: Head): Check {
  const api = handshake(p, head, CRIU_EVENTS, "UFFDIO_API with EVENT_FORK|EVENT_REMAP|EVENT_UNMAP|EVENT_REMOVE");
  if (api instanceof BigUint64Array)
    return result(head, "pass", "EVENT_FORK, EVENT_REMAP, EVENT_UNMAP, EVENT_REMOVE granted");
  // EVENT_FORK needs CAP_SYS_PTRACE (5.5+): EPERM is the kernel's answer for this context.
  if (api.errno !== "EPERM") return api;
  return { ...api, detail: `${api.detail} (EVENT_FORK needs CAP_SYS_PTRACE: run CRIU as root)` };
}

/** Kinds of memory QEMU registers, as mmap() flags. */
const ANON = K.MAP_PRIVATE | K.MAP_ANONYMOUS;
const MEMORY = { anon: ANON, hugetlb: ANON | K.MAP_HUGETLB | K.MAP_NORESERVE, shmem: K.MAP_SHARED };
const [MISSING, WP] = [K.UFFDIO_REGISTER_MODE_MISSING, K.UFFDIO_REGISTER_MODE_WP];
/** One registration test: the seed's sequence on one kind of memory, in one mode, needing one feature. */
type Registration = Head & { kind: keyof typeof MEMORY; mode: bigint; feature?: string };
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

/**
 * QEMU's postcopy_ram_supported_by_host(), generalised over the kind of memory: open, API, map,
 * register, unregister, check the ioctls the registration offers, clean up (its `goto out`).
 */
function register(p: Probe, spec: Registration): Check {
  const { sys, facts } = p;
  const head = { id: spec.id, title: spec.title };
  const { feature, ioctls } = needs(spec);
  const absent = lacking(head, p.features!, feature);
  if (absent) return absent;
  const len = spec.kind === "hugetlb" ? facts.hugePageSize : facts.pageSize;
  if (!len) return result(head, "fail", "no Hugepagesize in /proc/meminfo: kernel without hugetlbfs");
  const fd = openRoute(sys, p.route!);
  if (fd.ret < 0) return failed(head, "userfaultfd", fd);
  let memfd = -1;
  let area = -1;
  try {
    let r = sys.ioctl(fd.ret, K.UFFDIO_API, apiStruct(feature));
    if (r.ret < 0) return failed(head, "UFFDIO_API", r);
    if (spec.kind === "shmem") {
      r = sys.memfdCreate("postcopy-probe", K.MFD_CLOEXEC);
      if (r.ret < 0) return failed(head, "memfd_create", r);
      memfd = r.ret;
      r = sys.ftruncate(memfd, len);
      if (r.ret < 0) return failed(head, "ftruncate", r);
    }
    r = sys.mmap(0, len, K.PROT_READ | K.PROT_WRITE, MEMORY[spec.kind], memfd);
    if (r.ret === -1) return failed(head, "mmap", r);
    area = r.ret;
    const reg = new BigUint64Array([BigInt(area), BigInt(len), spec.mode, 0n]);
    r = sys.ioctl(fd.ret, K.UFFDIO_REGISTER, reg);
    if (r.ret < 0) return failed(head, "UFFDIO_REGISTER", r); // QEMU: "UFFDIO_REGISTER failed"
    r = sys.ioctl(fd.ret, K.UFFDIO_UNREGISTER, reg.subarray(0, 2));
    if (r.ret < 0) return failed(head, "UFFDIO_UNREGISTER", r);
    const missing = missingIoctls(reg[3], ioctls);
    const detail = `${len} B page, ioctls 0x${reg[3].toString(16)}`;
    if (missing.length) {
      return result(head, "fail", `${detail}; Missing userfault map features: ${missing.join(", ")}`, { missing });
    }
    if (spec.kind === "hugetlb" && !facts.nrHugepages) {
      return result(head, "warn", `${detail}; vm.nr_hugepages is 0: hugetlbfs guests would get no pages`);
    }
    return result(head, "pass", detail);
  } finally {
    if (area !== -1) sys.munmap(area, len);
    if (memfd >= 0) sys.close(memfd);
    sys.close(fd.ret);
  }
}

function checkRunAs(p: Probe, head: Head): Check {
  const { uid, user, qemuUser } = p.facts;
  if (p.opts.user) return result(head, "pass", `probing as ${user} (uid ${uid}), as --user asked`);
  if (uid !== 0 || !qemuUser) return result(head, "pass", `probing as ${user} (uid ${uid})`);
  const hint = `postcopy-probe --user ${qemuUser}`;
  return result(head, "warn", `root's answer may not be QEMU's: QEMU runs as ${qemuUser} here; run ${hint}`, { hint });
}

/** The checks in report order; those after uffd-open need a uffd, most also the feature mask. */
type Step = Head & { needs?: "route" | "features"; run: (p: Probe, head: Head) => Check };
const CHECKS: Step[] = [
  { id: "page-size", title: "host page size >= target page size", run: checkPageSize },
  { id: "uffd-open", title: "a userfaultfd (/dev/userfaultfd, then the syscall)", run: checkOpen },
  { id: "uffd-api", title: "UFFDIO_API handshake and REGISTER/UNREGISTER", needs: "route", run: checkApi },
  {
    id: "uffd-features",
    title: "userfault features as QEMU applies them (THREAD_ID)",
    needs: "features",
    run: checkFeatures,
  },
  ...REGISTRATIONS.map((spec): Step => ({ ...spec, needs: "features", run: (p) => register(p, spec) })),
  { id: "criu-events", title: "non-cooperative events (CRIU lazy pages)", needs: "features", run: checkCriu },
  { id: "round-trip", title: "real faults served with UFFDIO_COPY, bytes verified", run: checkRoundTrip },
  { id: "run-as", title: "the user QEMU runs as", run: checkRunAs },
];

/** Runs every check in order; a check whose prerequisite failed is skipped, saying which. */
export function runChecks(sys: Sys, facts: Facts, opts: Options): { checks: Check[]; probe: Probe } {
  const probe: Probe = { sys, facts, opts, route: null, umo: false, features: null };
  const checks = CHECKS.map(({ id, title, needs, run }) => {
    const head = { id, title };
    if (needs && !probe.route) return result(head, "skip", "no userfaultfd could be opened");
    if (needs === "features" && probe.features === null) return result(head, "skip", "UFFDIO_API did not answer");
    return run(probe, head);
  });
  return { checks, probe };
}

/** Every kernel feature bit by name; bits the probe does not know go under `unknown` in hex. */
export function decodeFeatures(mask: bigint | null): Record<string, boolean | string> {
  if (mask === null) return {};
  const known = Object.values(K.UFFD_FEATURE).reduce((m, b) => m | b, 0n);
  const named = Object.fromEntries(Object.entries(K.UFFD_FEATURE).map(([n, b]) => [n, (mask & b) !== 0n]));
  return { ...named, unknown: `0x${(mask & ~known).toString(16)}` };
}

// ── Round trips: real faults served, bytes verified, and --bench ──

/** How long any wait for a fault may take, and the slice between looks at the faulting thread. */
export const BOUND_MS = 1000;
const SLICE_MS = 5;
const EAGAIN = K.errnoOf("EAGAIN");
const NS_PER_US = 1000;
type Progress = (done: number) => void;

/** A thread that faults, and how its faults are served: what the round trips and --bench share. */
type Faulting<T> = {
  len: number;
  flags: number;
  mode: bigint;
  /** The libc function the thread runs on the area: strlen reads in user mode, uname writes in kernel mode. */
  fn: string;
  count: number;
  /** Makes the registered area ready before the thread starts, or says why it could not. */
  prepare?: (fd: number, area: number) => string | null;
  /** Serves the fault described in `msg`: null when served, else why not. */
  serve: (fd: number, msg: BigUint64Array, n: number) => string | null;
  /** Judges the thread's return value and the area once every fault was served. */
  finish: (ret: number, area: number, served: Float64Array) => T | string;
  progress?: Progress;
};

/**
 * Registers fresh memory on a new uffd, starts a native thread on it and serves its faults, each
 * wait bounded by boundMs: poll a slice at a time, looking at the thread between slices, so a thread
 * that returns without faulting (EFAULT under user-mode-only) is seen at once. Owns the uffd, the
 * mapping and the thread; the cleanup closes the uffd first, which frees a thread stuck in a fault
 * nobody served, so the join after it is bounded too. Returns `finish`'s answer or why it stopped.
 */
function serveFaults<T>(p: Probe, route: Route, f: Faulting<T>): T | string {
  const { sys } = p;
  const fd = openRoute(sys, route);
  if (fd.ret < 0) return `userfaultfd: ${errnoName(fd.errno)}`;
  let area = -1;
  let thread = -1;
  try {
    let r = sys.ioctl(fd.ret, K.UFFDIO_API, apiStruct(f.mode === WP ? K.UFFD_FEATURE.PAGEFAULT_FLAG_WP : 0n));
    if (r.ret < 0) return `UFFDIO_API: ${errnoName(r.errno)}`;
    r = sys.mmap(0, f.len, K.PROT_READ | K.PROT_WRITE, f.flags, -1);
    if (r.ret === -1) return `mmap ${f.len} B: ${errnoName(r.errno)}`;
    area = r.ret;
    r = sys.ioctl(fd.ret, K.UFFDIO_REGISTER, new BigUint64Array([BigInt(area), BigInt(f.len), f.mode, 0n]));
    if (r.ret < 0) return `UFFDIO_REGISTER: ${errnoName(r.errno)}`;
    const unready = f.prepare?.(fd.ret, area);
    if (unready) return unready;
    const t = sys.thread(f.fn, area);
    if (t.ret === -1) return `pthread_create(${f.fn}): ${errnoName(t.errno)}`;
    thread = t.ret;
    const msg = new BigUint64Array(4);
    const served = new Float64Array(f.count);
    const after = (n: number) => (n ? ` after ${n} faults` : "");
    let deadline = Bun.nanoseconds() + p.opts.boundMs * 1e6;
    for (let n = 0; n < f.count; ) {
      // Read first: in --bench the next fault is usually already waiting, and poll would cost a syscall.
      const r = sys.read(fd.ret, msg);
      if (r.ret === msg.byteLength) {
        if ((msg[0] & 0xffn) !== K.UFFD_EVENT_PAGEFAULT) continue;
        const unserved = f.serve(fd.ret, msg, n);
        if (unserved) return unserved;
        served[n++] = Bun.nanoseconds();
        deadline = served[n - 1] + p.opts.boundMs * 1e6;
        if (f.progress && (n & 1023) === 0) f.progress(n);
        continue;
      }
      if (r.errno !== EAGAIN) return `read: ${errnoName(r.errno)}`;
      if (sys.poll(fd.ret, SLICE_MS).ret > 0) continue;
      const done = sys.tryJoin(thread);
      if (done.errno === 0) {
        thread = -1; // reaped: the cleanup must not join it again
        const efault = done.ret === -1 ? " (EFAULT: the fault was not delivered)" : "";
        return `no fault event${after(n)}; ${f.fn} returned ${done.ret}${efault}`;
      }
      if (Bun.nanoseconds() > deadline) return `no fault event within ${p.opts.boundMs} ms${after(n)}`;
    }
    const done = sys.join(thread);
    thread = -1;
    return f.finish(done.ret, area, served);
  } finally {
    sys.close(fd.ret);
    if (thread !== -1) sys.join(thread);
    if (area !== -1) sys.munmap(area, f.len);
  }
}

/** A round trip: a libc function on a native thread faults on a fresh page, the probe serves it. */
type Trip = { key: string; name: string; fn: string; mode: bigint; resolve: bigint; flags: bigint };
/** Where the copied pattern's NUL sits: strlen's answer proves the bytes arrived. */
export const PATTERN_NUL = 1234;
const [COPY, ZEROPAGE, WRITEPROTECT] = [K.UFFDIO_COPY, K.UFFDIO_ZEROPAGE, K.UFFDIO_WRITEPROTECT];
const [READ, WRITE, WP_WRITE] = [
  0n,
  K.UFFD_PAGEFAULT_FLAG_WRITE,
  K.UFFD_PAGEFAULT_FLAG_WP | K.UFFD_PAGEFAULT_FLAG_WRITE,
];
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
  if (t.fn === "uname")
    return ret === 0 && String.fromCharCode(...page.subarray(0, 5)) === "Linux" ? null : `uname returned ${ret}`;
  // time() stores its answer in the page: the 32 low bits must match what it returned.
  const stored = Number(BigInt.asIntN(32, new BigInt64Array(page.buffer, page.byteOffset, 1)[0]));
  return ret !== -1 && stored === ret ? null : `time returned ${ret}, the page holds ${stored}`;
}
export type TripResult = { ok: boolean; ns: number; detail: string };

/** One round trip: a thread faults on one fresh page, the fault is served, the bytes are checked. */
function roundTrip(p: Probe, route: Route, t: Trip): TripResult {
  const { sys } = p;
  const len = p.facts.pageSize;
  const start = Bun.nanoseconds();
  // The kernel copies from `src` during UFFDIO_COPY: the closures below keep it alive until then.
  const src = new Uint8Array(len).fill(0x50);
  src[PATTERN_NUL] = 0;
  let page = 0n;
  const served = serveFaults(p, route, {
    len,
    flags: ANON,
    mode: t.mode,
    fn: t.fn,
    count: 1,
    prepare(fd, area) {
      page = BigInt(area);
      if (t.mode !== WP) return null;
      K.memory(area, len)[0] = 1; // write-protect guards present pages only
      const r = sys.ioctl(
        fd,
        WRITEPROTECT,
        new BigUint64Array([BigInt(area), BigInt(len), K.UFFDIO_WRITEPROTECT_MODE_WP]),
      );
      return r.ret < 0 ? `UFFDIO_WRITEPROTECT: ${errnoName(r.errno)}` : null;
    },
    serve(fd, msg) {
      const [flags, address] = [msg[1], msg[2]];
      if (flags !== t.flags || address !== page) return `unexpected fault: flags ${flags} at 0x${address.toString(16)}`;
      const r = sys.ioctl(fd, t.resolve, resolution(t, page, len, src));
      return r.ret < 0 ? `resolve: ${errnoName(r.errno)}` : null;
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

function checkRoundTrip(p: Probe, head: Head): Check {
  const route = servingRoute(p);
  if (!route) return result(head, "skip", "no userfaultfd could be opened");
  const wp = p.features !== null && (p.features & K.UFFD_FEATURE.PAGEFAULT_FLAG_WP) !== 0n;
  const trips = Object.fromEntries(
    TRIPS.filter((t) => wp || t.mode !== WP).map((t) => [t.key, roundTrip(p, route, t)]),
  );
  const all = Object.values(trips);
  const detail = all.map((t) => t.detail).join(", ");
  if (route === "user-mode-only") {
    const why = "QEMU cannot serve KVM's and vhost's kernel-mode faults with it";
    return result(head, "fail", `only a UFFD_USER_MODE_ONLY uffd: ${detail}; ${why}`, { trips, route });
  }
  return result(head, all.every((t) => t.ok) ? "pass" : "fail", `${detail} (thread start to join)`, { trips, route });
}

export type Bench = {
  faults: number;
  pageSize: number;
  p50Ns: number;
  p99Ns: number;
  pagesPerSec: number;
  bytesPerSec: number;
};

/**
 * --bench: one native thread runs strlen across `faults` registered pages, each missing, and the
 * main thread serves every fault with UFFDIO_COPY as fast as it can. The hot loop allocates nothing
 * but the Sys's answers: the copy struct and the time table are made once.
 */
export function bench(p: Probe, route: Route, faults: number, pageSize: number, flags: number, progress?: Progress) {
  const len = faults * pageSize;
  // The kernel copies from `fill` and `last` on every fault: `serve` holds them until the last one.
  const fill = new Uint8Array(pageSize).fill(0x50);
  const last = new Uint8Array(pageSize).fill(0x50);
  last[pageSize - 1] = 0; // strlen stops at the very end of the last page
  const copy = new BigUint64Array([0n, 0n, BigInt(pageSize), 0n, 0n]);
  const mask = ~BigInt(pageSize - 1);
  let lastPage = 0n;
  let start = 0;
  return serveFaults(p, route, {
    len,
    flags,
    mode: MISSING,
    fn: "strlen",
    count: faults,
    progress,
    prepare(_, area) {
      lastPage = BigInt(area + len - pageSize);
      start = Bun.nanoseconds();
      return null;
    },
    serve(fd, msg) {
      copy[0] = msg[2] & mask;
      copy[1] = BigInt(K.addressOf(copy[0] === lastPage ? last : fill));
      const c = p.sys.ioctl(fd, COPY, copy);
      return c.ret < 0 ? `UFFDIO_COPY: ${errnoName(c.errno)}` : null;
    },
    finish(ret, _, served): Bench | string {
      // The join reads 32 bits of strlen's size_t: compare those (huge pages can pass 2 GiB).
      if (ret !== Number(BigInt.asIntN(32, BigInt(len - 1)))) return `strlen returned ${ret}, not ${len - 1}`;
      // Each fault's time is the gap between two served faults; the first also holds the thread's start.
      const gaps = served.subarray(1).map((t, i) => t - served[i]);
      gaps.sort();
      const at = (q: number) => Math.round(gaps[Math.min(gaps.length - 1, Math.floor(gaps.length * q))]);
      const pagesPerSec = Math.round(faults / ((served[faults - 1] - start) / 1e9));
      return { faults, pageSize, p50Ns: at(0.5), p99Ns: at(0.99), pagesPerSec, bytesPerSec: pagesPerSec * pageSize };
    },
  });
}

// ── Capabilities: what each consumer can do here ──

export const CAPABILITIES = [
  ...["postcopy-ram", "postcopy-hugetlbfs", "postcopy-shmem", "background-snapshot", "postcopy-blocktime"],
  ...["criu-lazy-pages", "firecracker-uffd"],
] as const;
export type Capability = (typeof CAPABILITIES)[number];

/** What each consumer can do here: a pure function of the checks and the feature mask. */
export function capabilities(checks: Check[], features: bigint | null): Record<Capability, boolean> {
  const ok = (...ids: string[]) =>
    ids.every((id) => ["pass", "warn"].includes(checks.find((c) => c.id === id)?.status ?? ""));
  const has = (name: string) => features !== null && (features & K.UFFD_FEATURE[name]) !== 0n;
  const trips = tripsOf(checks);
  const served = (...keys: string[]) => keys.every((key) => trips[key]?.ok === true);
  // QEMU needs user-mode and kernel-mode (KVM, vhost) missing faults served.
  const ram =
    ok("page-size", "uffd-open", "uffd-api", "uffd-features", "register-anon") && served("user-read", "kernel-write");
  return {
    "postcopy-ram": ram,
    "postcopy-hugetlbfs": ram && ok("register-hugetlb"),
    "postcopy-shmem": ram && ok("register-shmem"),
    "background-snapshot": ok("uffd-open", "uffd-api", "write-protect") && served("write-protect"),
    "postcopy-blocktime": ram && has("THREAD_ID"),
    "criu-lazy-pages": ok("criu-events"),
    "firecracker-uffd": ok("uffd-open", "register-anon") && has("EVENT_REMOVE"),
  };
}

// ── Diagnosis: gates as named predicates, causes and fixes ──

export type Diagnosis = { cause: string; summary: string; evidence: string[]; fix: string[] };
/** What the diagnosis sees: the facts, what each route answered, and the checks. */
type Seen = { f: Facts; r: Record<string, string>; checks: Check[] };
type Gate = (s: Seen) => boolean;

const syscallRefused: Gate = ({ r }) => r.syscall !== "ok";
const userModeOnlyOpens: Gate = ({ r }) => r["user-mode-only"] === "ok";
const underSeccompFilter: Gate = ({ f }) => f.seccomp === 2;
const ptraceOnlyInUserNamespace: Gate = ({ f }) => f.userNamespace && f.capSysPtrace;
/** The capability/sysctl gate refused: EPERM that a filter does not explain (a filter refuses user-mode-only too). */
const permissionRefused: Gate = (s) => s.r.syscall === "EPERM" && (userModeOnlyOpens(s) || !underSeccompFilter(s));
const missingOf = (checks: Check[]) => checks.flatMap((c) => (c.missing as string[] | undefined) ?? []);
/** The gates between this context and what it needs, each a sentence over the facts and the routes' answers. */
export const GATES = {
  gvisorLacksUserfaultfd: (s: Seen) => s.f.gvisor && syscallRefused(s),
  seccompFilterDeniesSyscall: (s: Seen) =>
    underSeccompFilter(s) && !s.f.gvisor && syscallRefused(s) && !userModeOnlyOpens(s),
  kernelLacksUserfaultfd: (s: Seen) => s.r.syscall === "ENOSYS" && !underSeccompFilter(s) && !s.f.gvisor,
  ptraceIgnoredInUserNamespace: (s: Seen) => permissionRefused(s) && ptraceOnlyInUserNamespace(s),
  sysctlRefusesThisUser: (s: Seen) => permissionRefused(s) && !ptraceOnlyInUserNamespace(s),
  selinuxDenies: (s: Seen) => s.f.selinux === "enforcing" && [s.r.syscall, s.r.device].includes("EACCES"),
  deviceMissingAndSyscallRefused: (s: Seen) => s.r.device === "ENOENT" && syscallRefused(s),
  deviceRefusesUserAndSyscallRefused: (s: Seen) =>
    ["EACCES", "EPERM"].includes(s.r.device) && syscallRefused(s) && !!s.f.devnode,
  kernelLacksAFeature: (s: Seen) => missingOf(s.checks).length > 0,
  noHugePagesReserved: (s: Seen) => s.checks.some((c) => c.id === "register-hugetlb" && c.status === "warn"),
};

/** The first kernel with each feature or ioctl the capabilities need. */
const SINCE: Record<string, string> = {
  ...Object.fromEntries(
    ["EVENT_FORK", "EVENT_REMAP", "EVENT_REMOVE", "EVENT_UNMAP"].map((n) => [`UFFD_FEATURE_${n}`, "4.11"]),
  ),
  ...{ UFFD_FEATURE_MISSING_HUGETLBFS: "4.11", UFFD_FEATURE_MISSING_SHMEM: "4.11", UFFD_FEATURE_THREAD_ID: "4.14" },
  ...{ UFFD_FEATURE_PAGEFAULT_FLAG_WP: "5.7", UFFDIO_WRITEPROTECT: "5.7" },
};
const SYSCTL = "sysctl -w vm.unprivileged_userfaultfd=1";
const PERSIST = "echo vm.unprivileged_userfaultfd=1 > /etc/sysctl.d/99-userfaultfd.conf";
const CONTAINER_DEVICE = `docker run --device ${DEVICE} ...   # or podman run --device: QEMU 8.0+ opens it first`;
const SECCOMP_PROFILE = "docker run --security-opt seccomp=PROFILE.json ...   # PROFILE.json allowing userfaultfd";
const KUBE_SECCOMP = "kubectl: securityContext.seccompProfile: {type: Localhost, localhostProfile: PROFILE.json}";
const GVISOR = [
  "docker run --runtime=runc ...   # not --runtime=runsc",
  "kubectl edit pod ...   # drop runtimeClassName: gvisor",
];
const UDEV_RULE = `echo 'KERNEL=="userfaultfd", GROUP="kvm", MODE="0660"' > /etc/udev/rules.d/99-userfaultfd.rules`;
const UDEV = `${UDEV_RULE} && udevadm control --reload && udevadm trigger --subsystem-match=misc`;
const AUDIT = "ausearch -m avc -ts recent | audit2allow -M userfaultfd-local && semodule -i userfaultfd-local.pp";
const HUGEPAGES = "sysctl -w vm.nr_hugepages=1024   # 2 GiB of 2 MiB pages: size it to the guests' RAM";
const acl = (f: Facts) => `setfacl -m u:${f.user}:rw ${DEVICE}   # QEMU 8.0+ opens ${DEVICE} first`;
const setcap = (f: Facts) =>
  `setcap cap_sys_ptrace+ep "$(command -v qemu-system-${f.arch})"   # broad: also lets QEMU ptrace`;
const denied = ({ r }: Seen) => `userfaultfd(2): ${r.syscall}, with UFFD_USER_MODE_ONLY: ${r["user-mode-only"]}`;
const misc = ({ f }: Seen) =>
  f.miscMinor === null
    ? "no userfaultfd in /proc/misc: the device came in Linux 6.1"
    : `/proc/misc: ${f.miscMinor} userfaultfd: the kernel has it, this /dev does not`;

type Cause = {
  cause: string;
  when: Gate;
  summary: string;
  evidence: (s: Seen) => string[];
  fix: (s: Seen) => string[];
};
/** Root causes, in the order a reader should act on them: each is named when its gate holds. */
const CAUSES: Cause[] = [
  {
    cause: "gvisor",
    when: GATES.gvisorLacksUserfaultfd,
    summary: "gVisor's kernel does not implement userfaultfd",
    evidence: (s) => [`/proc/version: gVisor (release ${s.f.kernel})`, denied(s)],
    fix: () => GVISOR,
  },
  {
    cause: "seccomp",
    when: GATES.seccompFilterDeniesSyscall,
    summary: "a seccomp filter denies userfaultfd(2)",
    evidence: (s) => [`Seccomp: 2 in /proc/self/status (${s.f.seccompFilters} filters)`, denied(s)],
    fix: () => [CONTAINER_DEVICE, SECCOMP_PROFILE, "podman run --security-opt seccomp=PROFILE.json ...", KUBE_SECCOMP],
  },
  {
    cause: "no-kernel-support",
    when: GATES.kernelLacksUserfaultfd,
    summary: "this kernel has no userfaultfd (CONFIG_USERFAULTFD off, or before 4.3)",
    evidence: ({ f }) => [
      "userfaultfd(2): ENOSYS without a seccomp filter",
      `kernel ${f.kernel}`,
      `vm.unprivileged_userfaultfd: ${f.unprivilegedUserfaultfd ?? "absent"}`,
    ],
    fix: () => [
      "grep USERFAULTFD /boot/config-$(uname -r)   # want CONFIG_USERFAULTFD=y",
      "boot a kernel built with CONFIG_USERFAULTFD=y",
    ],
  },
  {
    cause: "user-namespace",
    when: GATES.ptraceIgnoredInUserNamespace,
    summary: "CAP_SYS_PTRACE is held only inside a user namespace, where userfaultfd ignores it",
    evidence: (s) => [`/proc/self/uid_map: ${s.f.uidMap}`, denied(s)],
    fix: () => [CONTAINER_DEVICE, `${SYSCTL}   # on the host`, PERSIST],
  },
  {
    cause: "unprivileged-userfaultfd",
    when: GATES.sysctlRefusesThisUser,
    summary: "vm.unprivileged_userfaultfd is 0 and this user lacks CAP_SYS_PTRACE",
    evidence: (s) => [
      denied(s),
      `vm.unprivileged_userfaultfd = ${s.f.unprivilegedUserfaultfd}`,
      `CAP_SYS_PTRACE: not held by ${s.f.user} (uid ${s.f.uid})`,
    ],
    fix: ({ f, r }) => [...(f.devnode && r.device !== "ok" ? [acl(f)] : []), SYSCTL, PERSIST, setcap(f)],
  },
  {
    cause: "selinux",
    when: GATES.selinuxDenies,
    summary: "SELinux is enforcing and denied userfaultfd",
    evidence: (s) => ["/sys/fs/selinux/enforce: 1", `${DEVICE}: ${s.r.device}`, denied(s)],
    fix: () => ["ausearch -m avc -ts recent | grep userfaultfd", AUDIT],
  },
  {
    cause: "devnode-missing",
    when: GATES.deviceMissingAndSyscallRefused,
    summary: `${DEVICE} is not there, and the syscall is refused`,
    evidence: (s) => [`${DEVICE}: ENOENT`, misc(s)],
    fix: ({ f }) =>
      f.miscMinor === null
        ? [`${SYSCTL}   # before 6.1 the syscall is the only way`, PERSIST]
        : [`mknod -m 0660 ${DEVICE} c 10 ${f.miscMinor} && chgrp kvm ${DEVICE}`, CONTAINER_DEVICE],
  },
  {
    cause: "devnode-permission",
    when: GATES.deviceRefusesUserAndSyscallRefused,
    summary: `${DEVICE} does not let this user in, and the syscall is refused`,
    evidence: ({ f, r }) => [
      `${DEVICE}: ${f.devnode?.mode} ${f.devnode?.owner} ${f.devnode?.group}`,
      `open as ${f.user} (uid ${f.uid}): ${r.device}`,
    ],
    fix: ({ f }) => [acl(f), UDEV, `usermod -aG kvm ${f.user}`],
  },
  {
    cause: "missing-feature",
    when: GATES.kernelLacksAFeature,
    summary: "the kernel lacks a feature or ioctl a capability needs",
    evidence: ({ checks }) => checks.filter((c) => missingOf([c]).length).map((c) => `${c.id}: ${c.detail}`),
    fix: ({ f, checks }) =>
      [...new Set(missingOf(checks))].map(
        (n) => `boot Linux ${SINCE[n] ?? "4.3"} or later for ${n} (this is ${f.kernel})`,
      ),
  },
  {
    cause: "hugepages-not-reserved",
    when: GATES.noHugePagesReserved,
    summary: "no huge pages are reserved: hugetlbfs-backed guests get none",
    evidence: ({ f }) => [`vm.nr_hugepages = ${f.nrHugepages}`],
    fix: () => [HUGEPAGES, "echo vm.nr_hugepages=1024 > /etc/sysctl.d/80-hugepages.conf"],
  },
];

/** Why, and what to run: a pure function of the facts and the checks. */
export function diagnose(facts: Facts, checks: Check[]): Diagnosis[] {
  const seen = { f: facts, r: routesOf(checks), checks };
  return CAUSES.filter((c) => c.when(seen)).map(({ cause, summary, evidence, fix }) => {
    return { cause, summary, evidence: evidence(seen), fix: fix(seen) };
  });
}

// ── Report: the whole probe as data, then one renderer ──

export type Report = {
  schema: string;
  version: string;
  postcopy: boolean;
  host: Record<string, unknown>;
  checks: Check[];
  features: Record<string, boolean | string>;
  capabilities: Record<Capability, boolean>;
  diagnosis: Diagnosis[];
  /** What the exit status stands for: --require's capabilities, postcopy-ram by default. */
  required: { capabilities: Capability[]; ok: boolean };
  roundTrip?: { ok: boolean; ns: number };
  qemu?: import("./qemu.ts").QemuAnswer;
  bench?: Bench | Bench[] | { error: string };
};

/** The kernel-mode write trip decides for QEMU: its result and time, when the check ran. */
function roundTripSummary(checks: Check[]): Report["roundTrip"] {
  const trips = tripsOf(checks);
  const served = trips["kernel-write"];
  return served && { ok: Boolean(trips["user-read"]?.ok && served.ok), ns: served.ns };
}

/** --bench on base pages, and on huge pages when enough are free; an error names what stopped it. */
function benchAll(p: Probe, progress?: Progress): Report["bench"] {
  const route = servingRoute(p);
  if (!route) return { error: "no userfaultfd could be opened" };
  const base = bench(p, route, p.opts.bench, p.facts.pageSize, ANON, progress);
  if (typeof base === "string") return { error: base };
  const { hugePageSize, freeHugepages } = p.facts;
  if (!hugePageSize || !freeHugepages || freeHugepages < 2) return base;
  const huge = bench(p, route, Math.min(p.opts.bench, freeHugepages), hugePageSize, ANON | K.MAP_HUGETLB, progress);
  return typeof huge === "string" ? [base] : [base, huge];
}

/** The whole probe, without printing: the report the renderers turn into text. */
export function probe(sys: Sys, facts: Facts, opts: Options, progress?: Progress): Report {
  const { checks, probe: p } = runChecks(sys, facts, opts);
  const caps = capabilities(checks, p.features);
  const qemu = opts.qemu === null ? undefined : loadQemu().checkQemu(sys, facts, routesOf(checks), caps, opts);
  if (qemu) checks.push(qemu.check);
  // What will happen decides the exit status: QEMU's answer, when it gave one.
  const decisive = { ...caps, "postcopy-ram": qemu?.answer?.accepts ?? caps["postcopy-ram"] };
  return {
    schema: SCHEMA,
    version: VERSION,
    postcopy: caps["postcopy-ram"],
    host: { ...facts },
    checks,
    features: decodeFeatures(p.features),
    capabilities: caps,
    required: { capabilities: opts.require, ok: opts.require.every((c) => decisive[c]) },
    diagnosis: diagnose(facts, checks),
    roundTrip: roundTripSummary(checks),
    ...(qemu?.answer ? { qemu: qemu.answer } : {}),
    ...(opts.bench ? { bench: benchAll(p, progress) } : {}),
  };
}
/** qemu.ts, loaded on first use only: a run without --qemu does not pay for it. */
const loadQemu = () => require("./qemu.ts") as typeof import("./qemu.ts");

const COLORS: Record<Status, number> = { pass: 32, warn: 33, fail: 31, skip: 90 };
const paint = (on: boolean, code: number, text: string) => (on ? `\x1b[${code}m${text}\x1b[0m` : text);
const WIDTH = 72;

/** The human report, in the style of virt-host-validate. */
export function renderHuman(report: Report, opts: Pick<Options, "quiet" | "color">): string {
  const { host, checks, qemu } = report;
  const yesNo = (yes: boolean, text: string) => paint(opts.color, yes ? COLORS.pass : COLORS.fail, text);
  const count = (s: Status) => `${s}=${checks.filter((c) => c.status === s).length}`;
  const lines: string[] = [];
  if (!opts.quiet)
    lines.push(`postcopy-probe ${report.version}: Linux ${host.kernel} ${host.arch}, ${host.user} (uid ${host.uid})`);
  for (const c of checks.filter((c) => !opts.quiet || c.status === "warn" || c.status === "fail")) {
    const status = paint(opts.color, COLORS[c.status], c.status.toUpperCase());
    lines.push(`${`Checking for ${c.title}`.padEnd(WIDTH)}: ${status}${c.detail ? ` (${c.detail})` : ""}`);
  }
  if (!opts.quiet) {
    lines.push("", "Capabilities:");
    for (const [name, yes] of Object.entries(report.capabilities))
      lines.push(`  ${name.padEnd(22)}${yesNo(yes, yes ? "yes" : "no")}`);
    for (const b of [report.bench ?? []].flat()) lines.push("", benchLine(b));
    lines.push("", ["pass", "warn", "fail", "skip"].map((s) => count(s as Status)).join(", "));
  }
  if (report.diagnosis.length) lines.push("", "Why / Fix:");
  for (const d of report.diagnosis) {
    lines.push(
      `  ${d.cause}: ${d.summary}`,
      ...d.evidence.map((e) => `    because ${e}`),
      ...d.fix.map((f) => `    $ ${f}`),
    );
  }
  const verdict = yesNo(report.postcopy, report.postcopy ? "SUPPORTED" : "NOT SUPPORTED");
  lines.push(`Postcopy live migration (QEMU postcopy-ram): ${verdict} for ${host.user} (uid ${host.uid})`);
  if (qemu?.agrees === false) {
    lines.push(yesNo(false, `QEMU ${qemu.version} (${qemu.path}) DISAGREES and decides the exit status: ${qemu.why}`));
  }
  const { capabilities: wanted, ok } = report.required;
  if (wanted.join() !== "postcopy-ram") lines.push(`Required ${wanted.join(", ")}: ${yesNo(ok, ok ? "YES" : "NO")}`);
  return `${lines.join("\n")}\n`;
}

const us = (ns: number) => `${(ns / NS_PER_US).toFixed(1)} µs`;
const benchLine = (b: Bench | { error: string }) => {
  if ("error" in b) return `Benchmark: could not run (${b.error})`;
  const rate = `${b.pagesPerSec} pages/s, ${((b.pagesPerSec * b.pageSize) / 2 ** 20).toFixed(0)} MiB/s`;
  return `Benchmark (${b.faults} faults on ${b.pageSize} B pages): p50 ${us(b.p50Ns)}, p99 ${us(b.p99Ns)}, ${rate}`;
};

/** The report as the postcopy-probe/1 JSON document. */
export const renderJson = (report: Report) => `${JSON.stringify(report, null, 2)}\n`;

/** Labels in the exposition format: backslash, quote and newline escaped. */
const labels = (pairs: Record<string, unknown>) => {
  const quote = (v: unknown) => String(v).replace(/[\\"\n]/g, (c) => (c === "\n" ? "\\n" : `\\${c}`));
  return `{${Object.entries(pairs)
    .map(([k, v]) => `${k}="${quote(v)}"`)
    .join(",")}}`;
};
const bool = (b: unknown) => (b === true ? 1 : 0);
type Sample = [string, number];
const byStatus = (c: Check) =>
  ["pass", "warn", "fail", "skip"].map((s): Sample => [labels({ id: c.id, status: s }), bool(c.status === s)]);
/** The gauges: name, help, and the samples a report gives it (none: the gauge is left out). */
const METRICS: Array<[string, string, (r: Report) => Sample[]]> = [
  ["supported", "1 when QEMU can use postcopy-ram here, in the probed context.", (r) => [["", bool(r.postcopy)]]],
  [
    "capability",
    "1 when a userfaultfd consumer can work here.",
    (r) => Object.entries(r.capabilities).map(([c, ok]) => [labels({ capability: c }), bool(ok)]),
  ],
  ["check", "1 on the status each check has, 0 on the others.", (r) => r.checks.flatMap(byStatus)],
  [
    "feature",
    "1 when the kernel offers the UFFD_FEATURE_* bit.",
    (r) => Object.entries(r.features).flatMap(([n, on]) => (n === "unknown" ? [] : [[labels({ name: n }), bool(on)]])),
  ],
  [
    "round_trip_seconds",
    "The kernel-mode write fault round trip, thread start to join.",
    (r) => (r.roundTrip ? [["", r.roundTrip.ns / 1e9]] : []),
  ],
  [
    "qemu_accepts",
    "1 when the installed QEMU itself accepts postcopy-ram.",
    ({ qemu: q }) => (q ? [[labels({ version: q.version, path: q.path }), bool(q.accepts)]] : []),
  ],
  [
    "info",
    "The probe's version and the context it answered for.",
    ({ version, host: h }) => [[labels({ version, kernel: h.kernel, user: h.user, uid: h.uid }), 1]],
  ],
];

/** Metrics for node_exporter's textfile collector: alert on postcopy_probe_supported == 0. */
export function renderPrometheus(report: Report): string {
  const lines = METRICS.flatMap(([name, help, of]) => {
    const samples = of(report);
    const metric = `postcopy_probe_${name}`;
    if (!samples.length) return [];
    return [`# HELP ${metric} ${help}`, `# TYPE ${metric} gauge`, ...samples.map(([l, v]) => `${metric}${l} ${v}`)];
  });
  return `${lines.join("\n")}\n`;
}

const RENDERERS = { human: renderHuman, json: renderJson, prometheus: renderPrometheus };

// ── Command line: options as data, main() and the exit status ──

const BENCH_FAULTS = 10000;
/** At most 2 GiB of 4 KiB pages in one --bench. */
const BENCH_MAX = 500000;
/** How long QEMU gets to greet and answer before it is killed. */
const QEMU_MS = 5000;

/** A wrong command line: exit 2 with the message and the usage line. */
export class UsageError extends Error {}
/** `value` if it is one of `valid`, else a UsageError naming the valid ones. */
function oneOf<T extends string>(value: string, valid: readonly T[], what: string): T {
  if (!valid.includes(value as T)) throw new UsageError(`Unknown ${what} "${value}": use ${valid.join(", ")}`);
  return value as T;
}
/** A whole number that `ok` accepts, else a UsageError saying what `what` must be. */
function whole(value: string, ok: (n: number) => boolean, what: string, must: string) {
  if (!/^[0-9]+$/.test(value) || !ok(Number(value))) throw new UsageError(`Invalid ${what} "${value}": ${must}`);
  return Number(value);
}
const pageSizeOf = (v: string) =>
  whole(v, (n) => n > 0 && (n & (n - 1)) === 0, "target page size", "a power of two in bytes, such as 4096");
const faultsOf = (v: string) =>
  v ? whole(v, (n) => n >= 2 && n <= BENCH_MAX, "fault count", `a whole number from 2 to ${BENCH_MAX}`) : BENCH_FAULTS;

const defaults = () => ({
  format: "human" as keyof typeof RENDERERS,
  require: ["postcopy-ram"] as Capability[], // the capabilities the exit status stands for
  quiet: false,
  targetPageSize: 4096,
  color: false,
  boundMs: BOUND_MS,
  bench: 0, // faults to serve in --bench; 0 when not benchmarking
  user: null as string | null, // --user: answer for this user, from a child with its ids
  qemu: null as string | true | null, // --qemu [PATH]: ask that QEMU too (true: look for one)
  qemuMs: QEMU_MS,
  help: false,
  version: false,
});

/** One option: its names, its value (in brackets when optional), the help, and what it sets. */
type Option = {
  names: string[];
  value?: string;
  help: string;
  set: (o: ReturnType<typeof defaults>, v: string) => unknown;
};
const FORMATS = Object.keys(RENDERERS) as Array<keyof typeof RENDERERS>;
/** The command line, as data. */
const OPTIONS: Option[] = [
  {
    names: ["--json"],
    help: "print the postcopy-probe/1 JSON document, nothing else",
    set: (o) => (o.format = "json"),
  },
  {
    names: ["--format"],
    value: "FORMAT",
    help: "human (default), json, or prometheus (node_exporter textfile collector)",
    set: (o, v) => (o.format = oneOf(v, FORMATS, "format")),
  },
  {
    names: ["--require"],
    value: "CAP[,CAP...]",
    help: "exit status for these capabilities instead of postcopy-ram alone",
    set: (o, v) => (o.require = v.split(",").map((c) => oneOf(c, CAPABILITIES, "capability"))),
  },
  {
    names: ["-q", "--quiet"],
    help: "print only warnings, failures, why and the verdict",
    set: (o) => (o.quiet = true),
  },
  {
    names: ["--user"],
    value: "NAME|UID",
    help: "answer for that user (as root): QEMU's user, not root",
    set: (o, v) => (o.user = v),
  },
  {
    names: ["--qemu"],
    value: "[PATH]",
    help: "also ask the installed QEMU (or PATH) over QMP, in the same context",
    set: (o, v) => (o.qemu = v || true),
  },
  {
    names: ["--target-page-size"],
    value: "N",
    help: "the guest's target page size in bytes (default 4096)",
    set: (o, v) => (o.targetPageSize = pageSizeOf(v)),
  },
  {
    names: ["--bench"],
    value: "[N]",
    help: `also serve N faults (default ${BENCH_FAULTS}) as fast as possible: p50, p99, pages/s`,
    set: (o, v) => (o.bench = faultsOf(v)),
  },
  { names: ["-h", "--help"], help: "this text", set: (o) => (o.help = true) },
  { names: ["-V", "--version"], help: "the version", set: (o) => (o.version = true) },
];
const synopsis = (o: Option) => `[${o.names.at(-1)}${o.value ? ` ${o.value}` : ""}]`;
const USAGE = `Usage: postcopy-probe ${OPTIONS.map(synopsis).join(" ")}`;
const HELP = [
  USAGE,
  "",
  "Tells whether QEMU can do userfaultfd postcopy live migration on this host, in this context.",
  "",
  ...OPTIONS.map((o) => `  ${`${o.names.join(", ")} ${o.value ?? ""}`.padEnd(24)}${o.help}`),
  "",
  "Exit status: 0 postcopy supported, 1 not supported, 2 the probe could not run.",
].join("\n");

/** Parses argv (without the runtime and script). Throws UsageError for anything it does not know. */
export function parseArgs(argv: string[], env: Record<string, string | undefined> = process.env, tty = false) {
  const opts = { ...defaults(), color: tty && !env.NO_COLOR };
  for (let i = 0; i < argv.length; i++) {
    const split = argv[i].startsWith("--") && argv[i].includes("=");
    const [name, inline] = split ? argv[i].split(/=(.*)/s) : [argv[i], undefined];
    const option = OPTIONS.find((o) => o.names.includes(name));
    if (!option) throw new UsageError(`Unknown option "${argv[i]}"`);
    const optional = option.value?.startsWith("[");
    // An optional value is the next argument only when that is not an option itself.
    const takesNext = option.value && inline === undefined && !(optional && argv[i + 1]?.startsWith("-"));
    const next = takesNext ? argv[++i] : undefined;
    if (option.value && !optional && (inline ?? next) === undefined)
      throw new UsageError(`Option "${name}" needs a value`);
    option.set(opts, inline ?? next ?? "");
  }
  return opts;
}

/** Carries --user's ids from the parent probe to the child that drops to them: name:uid:gid:groups. */
const AS_USER = "POSTCOPY_PROBE_AS_USER";

/** name:uid:gid:groups for --user NAME|UID, from /etc/passwd and /etc/group. */
function userIds(sys: Sys, who: string) {
  if (process.getuid!() !== 0) throw new UsageError(`--user needs root: this is uid ${process.getuid!()}`);
  const entry = rows(sys, "/etc/passwd").find((r) => r.length > 3 && (r[0] === who || r[2] === who));
  if (!entry) throw new UsageError(`Unknown user "${who}": not in /etc/passwd`);
  const [name, , uid, gid] = entry;
  const groups = rows(sys, "/etc/group").filter((g) => g[3]?.split(",").includes(name));
  return `${name}:${uid}:${gid}:${[gid, ...groups.map((g) => g[2])].join(",")}`;
}

/** The whole probe again in a child that becomes the user first; its output and status are the answer. */
function runAs(ids: string, argv: string[]) {
  // A compiled binary is its own script; `bun probe.ts` needs the script named.
  const self = Bun.main.startsWith("/$bunfs/") ? [process.execPath] : [process.execPath, Bun.main];
  const env = { ...process.env, [AS_USER]: ids };
  return Bun.spawnSync([...self, ...argv], { env, stdio: ["inherit", "inherit", "inherit"] }).exitCode ?? 2;
}

/** In the --user child: become the user before any fact is read. Throws when the kernel refuses. */
function becomeUser(sys: Sys, ids: string) {
  const [name, uid, gid, groups] = ids.split(":");
  const r = sys.become(Number(uid), Number(gid), groups.split(",").map(Number));
  if (r.ret < 0) throw new Error(`Cannot become ${name} (uid ${uid}): ${errnoName(r.errno)}`);
  return name;
}

/** The CLI: parse, facts, checks, capabilities, diagnosis, render, exit status. */
export function main(argv = process.argv.slice(2)) {
  // console.* and not process.stdout: Bun takes ~20 ms to set up process.stdout.
  let opts: ReturnType<typeof parseArgs>;
  let sys: Sys;
  try {
    opts = parseArgs(argv, process.env);
    if (opts.help || opts.version) return void console.log(opts.help ? HELP : VERSION);
    if (process.platform !== "linux")
      throw new Error(`Not Linux: userfaultfd is a Linux interface (this is "${process.platform}")`);
    sys = K.loadSys();
    const as = process.env[AS_USER];
    if (opts.user && !as) {
      process.exitCode = runAs(userIds(sys, opts.user), argv);
      return;
    }
    if (as) opts.user = becomeUser(sys, as);
  } catch (e) {
    console.error(`postcopy-probe: ${(e as Error).message}${e instanceof UsageError ? `\n${USAGE}` : ""}`);
    process.exitCode = 2;
    return;
  }
  opts.color = !process.env.NO_COLOR && sys.isatty(1) === 1;
  const tty = opts.bench && sys.isatty(2);
  const progress = tty ? (n: number) => sys.write(2, `\rbench: ${n}/${opts.bench} faults`) : undefined;
  const report = probe(sys, readFacts(sys), opts, progress);
  if (progress) sys.write(2, "\r\x1b[K");
  console.log(RENDERERS[opts.format](report, opts).trimEnd());
  process.exitCode = report.required.ok ? 0 : 1;
}

if (import.meta.main) main();
