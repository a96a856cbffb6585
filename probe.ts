#!/usr/bin/env bun
/**
 * postcopy-probe: can QEMU do userfaultfd-based postcopy live migration on this host, in this
 * context — and if not, why, and what to run. It runs QEMU's own postcopy_ram_supported_by_host()
 * sequence (and what QEMU 8.0+ adds) against the real kernel, through ffi.ts.
 *
 * ```sh
 * bun probe.ts            # report; exit 0 supported, 1 not, 2 could not run
 * bun probe.ts --json     # the postcopy-probe/1 JSON contract
 * ```
 *
 * Data flow: facts → checks → capabilities → diagnosis → one renderer → process.exitCode.
 */
import {
  addressOf,
  arch,
  errnoName,
  errnoOf,
  loadSys,
  memory,
  type R,
  type Sys,
  MAP_ANONYMOUS,
  MAP_HUGETLB,
  MAP_NORESERVE,
  MAP_PRIVATE,
  MAP_SHARED,
  MFD_CLOEXEC,
  O_CLOEXEC,
  O_NONBLOCK,
  O_RDWR,
  PROT_READ,
  PROT_WRITE,
  UFFD_API,
  UFFD_FEATURE,
  UFFD_USER_MODE_ONLY,
  UFFDIO_API,
  _UFFDIO,
  UFFDIO_REGISTER,
  UFFDIO_REGISTER_MODE_MISSING,
  UFFDIO_REGISTER_MODE_WP,
  UFFDIO_UNREGISTER,
  USERFAULTFD_IOC_NEW,
  UFFD_EVENT_PAGEFAULT,
  UFFD_PAGEFAULT_FLAG_WP,
  UFFD_PAGEFAULT_FLAG_WRITE,
  UFFDIO_COPY,
  UFFDIO_WRITEPROTECT,
  UFFDIO_WRITEPROTECT_MODE_WP,
  UFFDIO_ZEROPAGE,
} from "./ffi.ts";

export const VERSION = "0.1.0";
export const SCHEMA = "postcopy-probe/1";
export type Status = "pass" | "warn" | "fail" | "skip";
/** One line of the report. A check never prints and never throws for a kernel answer. */
export type Check = {
  id: string;
  title: string;
  status: Status;
  detail: string;
  errno?: string;
  hint?: string;
  [more: string]: unknown;
};
/** What the command line asks for; the renderers and checks read it. */
export type Options = Omit<ReturnType<typeof parseArgs>, "help" | "version">;

const DEVICE = "/dev/userfaultfd";
const CAP_SYS_PTRACE = 19n;
const S_IFCHR = 0o020000;
const QEMU_USERS = ["qemu", "libvirt-qemu"];
/** The rows of a colon-separated database such as /etc/passwd or /etc/group. */
const rows = (sys: Sys, path: string) => (sys.readText(path) ?? "").split("\n").map((l) => l.split(":"));
/** `crw-------` for a character device with mode 0600. */
const modeString = (mode: number) =>
  ((mode & 0o170000) === S_IFCHR ? "c" : "-") +
  [...Array(9)].map((_, i) => (mode & (0o400 >> i) ? "rwx"[i % 3] : "-")).join("");
/** A number from a one-value file such as /proc/sys/vm/nr_hugepages, or null when unreadable. */
const readNumber = (sys: Sys, path: string) => {
  const text = sys.readText(path);
  return text === null ? null : Number(text.trim());
};
/** The value after `key:` in a /proc file such as /proc/meminfo. */
const field = (text: string | null, key: string) => text?.match(new RegExp(`^${key}:\\s*(.*)$`, "m"))?.[1] ?? null;

/** The name for an id in /etc/passwd or /etc/group, or the number as text. */
const nameOf = (table: string[][], id: number) => table.find((r) => r[2] === String(id))?.[0] ?? String(id);

/** Read-only host context: every field is read from the host, nothing is inferred from versions. */
export type Facts = ReturnType<typeof readFacts>;

/** Reads the facts the checks and the diagnosis need. */
export function readFacts(sys: Sys) {
  const meminfo = sys.readText("/proc/meminfo");
  const hugeKb = field(meminfo, "Hugepagesize");
  const freeHuge = field(meminfo, "HugePages_Free");
  const uid = process.getuid!();
  const status = sys.readText("/proc/self/status");
  const number = (text: string | null) => (text === null ? null : Number(text));
  const uidMap = sys.readText("/proc/self/uid_map")?.trim().split("\n")[0].trim().replace(/\s+/g, " ") ?? "";
  const node = sys.stat(DEVICE);
  const misc = sys.readText("/proc/misc")?.match(/^\s*(\d+) userfaultfd$/m);
  const enforce = sys.readText("/sys/fs/selinux/enforce")?.trim();
  const version = `${sys.readText("/proc/version") ?? ""}`;
  const passwd = rows(sys, "/etc/passwd");
  return {
    kernel: sys.readText("/proc/sys/kernel/osrelease")?.trim() ?? "unknown",
    arch: arch!.name,
    pageSize: sys.pageSize(),
    hugePageSize: hugeKb === null ? null : Number.parseInt(hugeKb) * 1024,
    nrHugepages: readNumber(sys, "/proc/sys/vm/nr_hugepages"),
    freeHugepages: number(freeHuge),
    uid,
    user: nameOf(passwd, uid),
    // Absent: no CONFIG_USERFAULTFD, or a kernel before 5.2.
    unprivilegedUserfaultfd: readNumber(sys, "/proc/sys/vm/unprivileged_userfaultfd"),
    capSysPtrace: (BigInt(`0x${field(status, "CapEff") ?? "0"}`) >> CAP_SYS_PTRACE) % 2n === 1n,
    seccomp: number(field(status, "Seccomp")), // 0 none, 1 strict, 2 filter
    seccompFilters: number(field(status, "Seccomp_filters")),
    uidMap,
    userNamespace: uidMap !== "0 0 4294967295",
    // As `ls -l` shows it; null when there is no such node.
    devnode:
      node.ret < 0
        ? null
        : {
            mode: modeString(node.mode),
            owner: nameOf(passwd, node.uid),
            group: nameOf(rows(sys, "/etc/group"), node.gid),
          },
    // The kernel has the device even when this /dev lacks it (a container).
    miscMinor: misc ? Number(misc[1]) : null,
    selinux: enforce === "1" ? "enforcing" : enforce === "0" ? "permissive" : null,
    // gVisor's Sentry: "-gvisor" in the release, or the fixed 2016 build date of its /proc/version.
    gvisor: /gvisor/i.test(version) || version.includes("Sun Jan 10 15:06:54 PST 2016"),
    // The user QEMU usually runs as here, when there is one.
    qemuUser: QEMU_USERS.find((u) => passwd.some((r) => r[0] === u)) ?? null,
  };
}

/** How this context gets a uffd, as QEMU 8.0+ does: the device first, then the syscall. */
type Route = "device" | "syscall" | "user-mode-only";
/** What the checks share: the Sys, the facts, and what earlier checks learnt. */
export type Probe = {
  sys: Sys;
  facts: Facts;
  opts: Options;
  route: Route | null;
  userModeOnly: boolean;
  features: bigint | null;
};

const UFFD_FLAGS = O_CLOEXEC | O_NONBLOCK;
/** A new uffd through one route; the device's own fd is closed before returning. */
function openRoute(sys: Sys, route: Route): R {
  if (route === "syscall") return sys.userfaultfd(UFFD_FLAGS);
  if (route === "user-mode-only") return sys.userfaultfd(UFFD_FLAGS | UFFD_USER_MODE_ONLY);
  const dev = sys.open(DEVICE, O_RDWR | O_CLOEXEC);
  if (dev.ret < 0) return dev;
  try {
    return sys.ioctl(dev.ret, USERFAULTFD_IOC_NEW, UFFD_FLAGS);
  } finally {
    sys.close(dev.ret);
  }
}
const openUffd = (p: Probe) => openRoute(p.sys, p.route!);
/** The route faults can be served on: QEMU's, else a user-mode-only uffd (which shows what it lacks). */
const servingRoute = (p: Probe): Route | null => p.route ?? (p.userModeOnly ? "user-mode-only" : null);
/** What uffd-open found for each route ("ok" or an errno name), and the round trips' results. */
const routesOf = (checks: Check[]) =>
  (checks.find((c) => c.id === "uffd-open")?.routes ?? {}) as Record<string, string>;
const tripsOf = (checks: Check[]) =>
  (checks.find((c) => c.id === "round-trip")?.trips ?? {}) as Record<string, TripResult>;

/** A uffdio_api struct asking for `features`. */
const apiStruct = (features: bigint) => new BigUint64Array([UFFD_API, features, 0n]);
const bit = (n: number) => 1n << BigInt(n);
/** UFFDIO_* names of the ioctls in `names` whose bits are not set in `mask`. */
const missingIoctls = (mask: bigint, names: string[]) =>
  names.filter((n) => !(mask & bit(_UFFDIO[n]))).map((n) => `UFFDIO_${n}`);
/** Names of the features in `wanted` that `offered` lacks, as UFFD_FEATURE_* names. */
const missingFeatures = (offered: bigint, wanted: bigint) =>
  Object.entries(UFFD_FEATURE)
    .filter(([, b]) => wanted & b && !(offered & b))
    .map(([n]) => `UFFD_FEATURE_${n}`);
const featureMask = (...names: string[]) => names.reduce((m, n) => m | UFFD_FEATURE[n], 0n);

type Head = Pick<Check, "id" | "title">;
const result = (head: Head, status: Status, detail: string, more: Partial<Check> = {}): Check => ({
  ...head,
  status,
  detail,
  ...more,
});
/** A failed call as a check result: `UFFDIO_REGISTER: EINVAL`. */
const failed = (head: Head, call: string, r: R, more: Partial<Check> = {}) =>
  result(head, "fail", `${call}: ${errnoName(r.errno)}`, { errno: errnoName(r.errno), ...more });

function checkPageSize(p: Probe, head: Head): Check {
  const { pageSize } = p.facts;
  const target = p.opts.targetPageSize;
  const detail = `host ${pageSize}, target ${target}`;
  // QEMU: "Target page size bigger than host page size"
  return result(head, target > pageSize ? "fail" : "pass", detail, { pageSize, targetPageSize: target });
}

function checkOpen(p: Probe, head: Head): Check {
  const { sys } = p;
  const routes: Record<string, string> = {};
  for (const route of ["device", "syscall", "user-mode-only"] as const) {
    const r = openRoute(sys, route);
    routes[route] = r.ret < 0 ? errnoName(r.errno) : "ok";
    if (r.ret >= 0) sys.close(r.ret);
  }
  const said = `${DEVICE}: ${routes.device}, userfaultfd(2): ${routes.syscall}, user-mode-only: ${routes["user-mode-only"]}`;
  p.route = routes.device === "ok" ? "device" : routes.syscall === "ok" ? "syscall" : null;
  p.userModeOnly = routes["user-mode-only"] === "ok";
  if (p.route === "device" && routes.syscall !== "ok")
    return result(head, "warn", `${said}; QEMU older than 8.0 only uses the syscall and will fail`, {
      routes,
      route: p.route,
    });
  if (p.route) return result(head, "pass", said, { routes, route: p.route });
  return result(head, "fail", said, { routes, errno: routes.syscall });
}

/** UFFDIO_API asking for `features` on a throw-away uffd: the reply, or the failed check. */
function handshake(p: Probe, head: Head, features: bigint, call = "UFFDIO_API"): BigUint64Array | Check {
  const absent = missingFeatures(p.features ?? features, features);
  if (absent.length) return result(head, "fail", `kernel does not offer ${absent.join(", ")}`, { missing: absent });
  const fd = openUffd(p);
  if (fd.ret < 0) return failed(head, "userfaultfd", fd);
  try {
    const api = apiStruct(features);
    const r = p.sys.ioctl(fd.ret, UFFDIO_API, api);
    return r.ret < 0 ? failed(head, call, r) : api;
  } finally {
    p.sys.close(fd.ret);
  }
}
/** QEMU's ufd_check_and_apply() requires REGISTER and UNREGISTER: "Missing userfault features". */
function registerIoctls(head: Head, api: BigUint64Array, detail: string): Check {
  const missing = missingIoctls(api[2], ["REGISTER", "UNREGISTER"]);
  if (missing.length)
    return result(head, "fail", `${detail}; Missing userfault features: ${missing.join(", ")}`, { missing });
  return result(head, "pass", detail);
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
  const asked = p.features! & UFFD_FEATURE.THREAD_ID;
  const api = handshake(p, head, asked);
  if (!(api instanceof BigUint64Array)) return api;
  const applied = registerIoctls(head, api, "UFFD_FEATURE_THREAD_ID applied");
  if (asked || applied.status === "fail") return applied;
  return result(head, "warn", "UFFD_FEATURE_THREAD_ID not offered: no postcopy-blocktime", {
    missing: ["UFFD_FEATURE_THREAD_ID"],
  });
}

/** One registration test: the seed's sequence, on one kind of memory, in one mode. */
type Registration = Head & {
  kind: "anon" | "hugetlb" | "shmem";
  flags: number;
  mode: bigint;
  features: bigint;
  ioctls: string[];
};
const REGISTRATIONS: Registration[] = [
  {
    id: "register-anon",
    title: "UFFDIO_REGISTER MISSING on anonymous memory",
    kind: "anon",
    flags: MAP_PRIVATE | MAP_ANONYMOUS,
    mode: UFFDIO_REGISTER_MODE_MISSING,
    features: 0n,
    ioctls: ["WAKE", "COPY", "ZEROPAGE"],
  },
  // No ZEROPAGE on hugetlb: QEMU places zero huge pages with COPY.
  {
    id: "register-hugetlb",
    title: "UFFDIO_REGISTER MISSING on hugetlbfs memory",
    kind: "hugetlb",
    flags: MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB | MAP_NORESERVE,
    mode: UFFDIO_REGISTER_MODE_MISSING,
    features: UFFD_FEATURE.MISSING_HUGETLBFS,
    ioctls: ["WAKE", "COPY"],
  },
  {
    id: "register-shmem",
    title: "UFFDIO_REGISTER MISSING on shared memory (memfd)",
    kind: "shmem",
    flags: MAP_SHARED,
    mode: UFFDIO_REGISTER_MODE_MISSING,
    features: UFFD_FEATURE.MISSING_SHMEM,
    ioctls: ["WAKE", "COPY", "ZEROPAGE"],
  },
  {
    id: "write-protect",
    title: "UFFDIO_REGISTER WP (background-snapshot)",
    kind: "anon",
    flags: MAP_PRIVATE | MAP_ANONYMOUS,
    mode: UFFDIO_REGISTER_MODE_WP,
    features: UFFD_FEATURE.PAGEFAULT_FLAG_WP,
    ioctls: ["WRITEPROTECT"],
  },
];

/**
 * QEMU's postcopy_ram_supported_by_host(), generalised over the kind of memory: open, API, map,
 * register, unregister, check the ioctls the registration offers, clean up (its `goto out`).
 */
function register(p: Probe, spec: Registration): Check {
  const head = { id: spec.id, title: spec.title };
  const { sys, facts } = p;
  const absent = missingFeatures(p.features!, spec.features);
  if (absent.length) return result(head, "fail", `kernel does not offer ${absent.join(", ")}`, { missing: absent });
  const len = spec.kind === "hugetlb" ? facts.hugePageSize : facts.pageSize;
  if (!len) return result(head, "fail", "no Hugepagesize in /proc/meminfo: kernel without hugetlbfs");
  const fd = openUffd(p);
  if (fd.ret < 0) return failed(head, "userfaultfd", fd);
  let memfd = -1;
  let area = -1;
  try {
    let r = sys.ioctl(fd.ret, UFFDIO_API, apiStruct(spec.features));
    if (r.ret < 0) return failed(head, "UFFDIO_API", r);
    if (spec.kind === "shmem") {
      r = sys.memfdCreate("postcopy-probe", MFD_CLOEXEC);
      if (r.ret < 0) return failed(head, "memfd_create", r);
      memfd = r.ret;
      r = sys.ftruncate(memfd, len);
      if (r.ret < 0) return failed(head, "ftruncate", r);
    }
    r = sys.mmap(0, len, PROT_READ | PROT_WRITE, spec.flags, memfd);
    if (r.ret === -1) return failed(head, "mmap", r);
    area = r.ret;
    const reg = new BigUint64Array([BigInt(area), BigInt(len), spec.mode, 0n]);
    r = sys.ioctl(fd.ret, UFFDIO_REGISTER, reg);
    if (r.ret < 0) return failed(head, "UFFDIO_REGISTER", r); // QEMU: "UFFDIO_REGISTER failed"
    r = sys.ioctl(fd.ret, UFFDIO_UNREGISTER, reg.subarray(0, 2));
    if (r.ret < 0) return failed(head, "UFFDIO_UNREGISTER", r);
    const missing = missingIoctls(reg[3], spec.ioctls);
    const detail = `${len} B page, ioctls 0x${reg[3].toString(16)}`;
    if (missing.length)
      return result(head, "fail", `${detail}; Missing userfault map features: ${missing.join(", ")}`, { missing });
    if (spec.kind === "hugetlb" && !facts.nrHugepages)
      return result(head, "warn", `${detail}; vm.nr_hugepages is 0: hugetlbfs guests would get no pages`);
    return result(head, "pass", detail);
  } finally {
    if (area !== -1) sys.munmap(area, len);
    if (memfd >= 0) sys.close(memfd);
    sys.close(fd.ret);
  }
}

const CRIU_EVENTS = featureMask("EVENT_FORK", "EVENT_REMAP", "EVENT_UNMAP", "EVENT_REMOVE");
function checkCriu(p: Probe, head: Head): Check {
  // EVENT_FORK needs CAP_SYS_PTRACE (5.5+): EPERM is the kernel's answer for this context.
  const api = handshake(p, head, CRIU_EVENTS, "UFFDIO_API with EVENT_FORK|EVENT_REMAP|EVENT_UNMAP|EVENT_REMOVE");
  if (!(api instanceof BigUint64Array) && api.errno === "EPERM")
    return { ...api, detail: `${api.detail} (EVENT_FORK needs CAP_SYS_PTRACE: run CRIU as root)` };
  if (!(api instanceof BigUint64Array)) return api;
  return result(head, "pass", "EVENT_FORK, EVENT_REMAP, EVENT_UNMAP, EVENT_REMOVE granted");
}

/** How long any wait for a fault may take, and the slice between looks at the faulting thread. */
export const BOUND_MS = 1000;
const SLICE_MS = 5;
const NS_PER_US = 1000;

/** A fault round trip: a libc function on a native thread faults on a fresh page, the probe serves it. */
type Trip = {
  key: string;
  name: string;
  fn: "strlen" | "uname" | "time";
  mode: bigint;
  resolve: bigint;
  flags: bigint;
  /** null when the thread's return value and the page's bytes prove the fault was served. */
  verify: (ret: number, page: Uint8Array) => string | null;
};
/** Where the copied pattern's NUL sits: strlen's answer proves the bytes arrived. */
export const PATTERN_NUL = 1234;
const TRIPS: Trip[] = [
  {
    key: "user-read",
    name: "user-mode read",
    fn: "strlen",
    mode: UFFDIO_REGISTER_MODE_MISSING,
    resolve: UFFDIO_COPY,
    flags: 0n,
    verify: (ret) => (ret === PATTERN_NUL ? null : `strlen returned ${ret}, not ${PATTERN_NUL}`),
  },
  {
    // The kernel's copy_to_user, as KVM and vhost touch guest RAM; a user-mode-only uffd gets no event.
    key: "kernel-write",
    name: "kernel-mode write",
    fn: "uname",
    mode: UFFDIO_REGISTER_MODE_MISSING,
    resolve: UFFDIO_COPY,
    flags: UFFD_PAGEFAULT_FLAG_WRITE,
    verify: (ret, page) =>
      ret === 0 && String.fromCharCode(...page.subarray(0, 5)) === "Linux" ? null : `uname returned ${ret}`,
  },
  {
    key: "zeropage",
    name: "zeropage",
    fn: "strlen",
    mode: UFFDIO_REGISTER_MODE_MISSING,
    resolve: UFFDIO_ZEROPAGE,
    flags: 0n,
    verify: (ret) => (ret === 0 ? null : `strlen returned ${ret} on a zero page`),
  },
  {
    key: "write-protect",
    name: "write-protect",
    fn: "time",
    mode: UFFDIO_REGISTER_MODE_WP,
    resolve: UFFDIO_WRITEPROTECT,
    flags: UFFD_PAGEFAULT_FLAG_WP | UFFD_PAGEFAULT_FLAG_WRITE,
    verify: (ret, page) => {
      const stored = Number(BigInt.asIntN(32, new BigInt64Array(page.buffer, page.byteOffset, 1)[0]));
      return ret !== -1 && stored === ret ? null : `time returned ${ret}, the page holds ${stored}`;
    },
  },
];
export type TripResult = { ok: boolean; ns: number; detail: string };

type Wait = { fault: true } | { exited: number } | { timeout: true };
/** A uffd with `len` bytes of fresh memory registered on it, and at most one faulting thread. */
type Arena = {
  fd: number;
  area: number;
  start(fn: string): string | null;
  wait(msg: BigUint64Array): Wait;
  join(): number;
};

/**
 * Sets up an arena for `use` and owns everything in it. The cleanup closes the uffd first: that
 * frees a thread stuck in a fault nobody served, so the join after it is bounded too.
 */
function arena<T>(
  p: Probe,
  route: Route,
  len: number,
  flags: number,
  mode: bigint,
  use: (a: Arena) => T | string,
): T | string {
  const { sys } = p;
  const fd = openRoute(sys, route);
  if (fd.ret < 0) return `userfaultfd: ${errnoName(fd.errno)}`;
  let area = -1;
  let thread = -1;
  try {
    let r = sys.ioctl(
      fd.ret,
      UFFDIO_API,
      apiStruct(mode === UFFDIO_REGISTER_MODE_WP ? UFFD_FEATURE.PAGEFAULT_FLAG_WP : 0n),
    );
    if (r.ret < 0) return `UFFDIO_API: ${errnoName(r.errno)}`;
    r = sys.mmap(0, len, PROT_READ | PROT_WRITE, flags, -1);
    if (r.ret === -1) return `mmap ${len} B: ${errnoName(r.errno)}`;
    area = r.ret;
    r = sys.ioctl(fd.ret, UFFDIO_REGISTER, new BigUint64Array([BigInt(area), BigInt(len), mode, 0n]));
    if (r.ret < 0) return `UFFDIO_REGISTER: ${errnoName(r.errno)}`;
    return use({
      fd: fd.ret,
      area,
      start(fn) {
        const t = sys.thread(fn, area);
        thread = t.ret;
        return t.ret === -1 ? `pthread_create(${fn}): ${errnoName(t.errno)}` : null;
      },
      /** Waits, at most boundMs, for a fault message in `msg` or for the thread to end without one. */
      wait(msg) {
        const deadline = Bun.nanoseconds() + p.opts.boundMs * 1e6;
        while (Bun.nanoseconds() < deadline) {
          if (sys.poll(fd.ret, SLICE_MS).ret > 0 && sys.read(fd.ret, msg).ret === msg.byteLength)
            return { fault: true };
          const done = sys.tryJoin(thread);
          if (done.errno !== 0) continue; // EBUSY: still running
          thread = -1; // reaped by tryJoin: the cleanup must not join it again
          return { exited: done.ret };
        }
        return { timeout: true };
      },
      join() {
        const done = sys.join(thread);
        thread = -1;
        return done.ret;
      },
    });
  } finally {
    sys.close(fd.ret);
    if (thread !== -1) sys.join(thread);
    if (area !== -1) sys.munmap(area, len);
  }
}

/** The resolving ioctl's struct for a fault at `page`: uffdio_copy, uffdio_zeropage or uffdio_writeprotect. */
function resolution(t: Trip, page: number, len: number, src: Uint8Array) {
  if (t.resolve === UFFDIO_COPY) return new BigUint64Array([BigInt(page), BigInt(addressOf(src)), BigInt(len), 0n, 0n]);
  if (t.resolve === UFFDIO_ZEROPAGE) return new BigUint64Array([BigInt(page), BigInt(len), 0n, 0n]);
  return new BigUint64Array([BigInt(page), BigInt(len), 0n]); // mode 0: clear WP and wake
}

/** One round trip: a thread faults on one fresh page, the fault is served, the bytes are checked. */
function roundTrip(p: Probe, route: Route, t: Trip): TripResult {
  const { sys } = p;
  const len = p.facts.pageSize;
  const start = Bun.nanoseconds();
  const served = arena(p, route, len, MAP_PRIVATE | MAP_ANONYMOUS, t.mode, ({ fd, area, ...a }) => {
    const page = memory(area, len);
    if (t.mode === UFFDIO_REGISTER_MODE_WP) {
      page[0] = 1; // write-protect guards present pages only
      const r = sys.ioctl(
        fd,
        UFFDIO_WRITEPROTECT,
        new BigUint64Array([BigInt(area), BigInt(len), UFFDIO_WRITEPROTECT_MODE_WP]),
      );
      if (r.ret < 0) return `UFFDIO_WRITEPROTECT: ${errnoName(r.errno)}`;
    }
    const msg = new BigUint64Array(4);
    const seen = a.start(t.fn) ?? a.wait(msg);
    if (typeof seen === "string") return seen;
    if ("timeout" in seen) return `no fault event within ${p.opts.boundMs} ms`;
    if ("exited" in seen)
      return `no fault event; ${t.fn} returned ${seen.exited}${seen.exited === -1 ? " (EFAULT: the fault was not delivered)" : ""}`;
    const [event, flags, address] = [msg[0] & 0xffn, msg[1], msg[2]];
    if (event !== UFFD_EVENT_PAGEFAULT || flags !== t.flags || address !== BigInt(area))
      return `unexpected event 0x${event.toString(16)} flags ${flags} at 0x${address.toString(16)}`;
    const src = new Uint8Array(len).fill(0x50);
    src[PATTERN_NUL] = 0;
    const r = sys.ioctl(fd, t.resolve, resolution(t, area, len, src));
    if (r.ret < 0) return `resolve: ${errnoName(r.errno)}`;
    return t.verify(a.join(), page) ?? { ns: Bun.nanoseconds() - start };
  });
  if (typeof served === "string") return { ok: false, ns: Bun.nanoseconds() - start, detail: `${t.name}: ${served}` };
  return { ok: true, ns: served.ns, detail: `${t.name} ${Math.round(served.ns / NS_PER_US)} µs` };
}

function checkRoundTrip(p: Probe, head: Head): Check {
  const route = servingRoute(p);
  if (!route) return result(head, "skip", "no userfaultfd could be opened");
  const wp = p.features !== null && (p.features & UFFD_FEATURE.PAGEFAULT_FLAG_WP) !== 0n;
  const trips = Object.fromEntries(
    TRIPS.filter((t) => wp || t.mode !== UFFDIO_REGISTER_MODE_WP).map((t) => [t.key, roundTrip(p, route, t)]),
  );
  const all = Object.values(trips);
  const detail = all.map((t) => t.detail).join(", ");
  if (route === "user-mode-only")
    return result(
      head,
      "fail",
      `only a UFFD_USER_MODE_ONLY uffd: ${detail}; QEMU cannot serve KVM's and vhost's kernel-mode faults with it`,
      { trips, route },
    );
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
 * but the Sys's answers: the message, copy struct and time table are made once.
 */
export function bench(
  p: Probe,
  route: Route,
  faults: number,
  pageSize: number,
  flags: number,
  progress?: (done: number) => void,
): Bench | string {
  const { sys } = p;
  const len = faults * pageSize;
  return arena(p, route, len, flags, UFFDIO_REGISTER_MODE_MISSING, ({ fd, area, ...a }) => {
    const fill = new Uint8Array(pageSize).fill(0x50);
    const last = new Uint8Array(pageSize).fill(0x50);
    last[pageSize - 1] = 0; // strlen stops at the very end of the last page
    const [fillAt, lastAt, lastPage] = [
      BigInt(addressOf(fill)),
      BigInt(addressOf(last)),
      BigInt(area + len - pageSize),
    ];
    const copy = new BigUint64Array([0n, 0n, BigInt(pageSize), 0n, 0n]);
    const msg = new BigUint64Array(4);
    const served = new Float64Array(faults);
    const mask = ~BigInt(pageSize - 1);
    const EAGAIN = errnoOf("EAGAIN");
    const failed = a.start("strlen");
    if (failed) return failed;
    const start = Bun.nanoseconds();
    for (let n = 0; n < faults; ) {
      const r = sys.read(fd, msg);
      if (r.ret === -1 && r.errno === EAGAIN) {
        if (sys.poll(fd, p.opts.boundMs).ret <= 0)
          return `no fault event within ${p.opts.boundMs} ms after ${n} faults`;
        continue;
      }
      if (r.ret === -1) return `read: ${errnoName(r.errno)}`;
      if ((msg[0] & 0xffn) !== UFFD_EVENT_PAGEFAULT) continue;
      copy[0] = msg[2] & mask;
      copy[1] = copy[0] === lastPage ? lastAt : fillAt;
      const c = sys.ioctl(fd, UFFDIO_COPY, copy);
      if (c.ret < 0) return `UFFDIO_COPY: ${errnoName(c.errno)}`;
      served[n++] = Bun.nanoseconds();
      if (progress && (n & 1023) === 0) progress(n);
    }
    // The join reads 32 bits of strlen's size_t: compare those (huge pages can pass 2 GiB).
    const ret = a.join();
    if (ret !== Number(BigInt.asIntN(32, BigInt(len - 1)))) return `strlen returned ${ret}, not ${len - 1}`;
    const seconds = (served[faults - 1] - start) / 1e9;
    // Each fault's time is the gap between two served faults; the first also holds the thread's start.
    const gaps = served
      .subarray(1)
      .map((t, i) => t - served[i])
      .sort();
    const at = (q: number) => Math.round(gaps[Math.min(gaps.length - 1, Math.floor(gaps.length * q))]);
    const pagesPerSec = Math.round(faults / seconds);
    return { faults, pageSize, p50Ns: at(0.5), p99Ns: at(0.99), pagesPerSec, bytesPerSec: pagesPerSec * pageSize };
  });
}

function checkRunAs(p: Probe, head: Head): Check {
  const { uid, user, qemuUser } = p.facts;
  if (p.opts.user) return result(head, "pass", `probing as ${user} (uid ${uid}), as --user asked`);
  if (uid !== 0 || !qemuUser) return result(head, "pass", `probing as ${user} (uid ${uid})`);
  const hint = `postcopy-probe --user ${qemuUser}`;
  return result(head, "warn", `root's answer may not be QEMU's: QEMU runs as ${qemuUser} here; run ${hint}`, { hint });
}

/** The checks in report order; those after uffd-open need a uffd, most also the feature mask. */
type Step = Head & { needs: "route" | "features" | null; run: (p: Probe, head: Head) => Check };
const CHECKS: Step[] = [
  { id: "page-size", title: "host page size >= target page size", needs: null, run: checkPageSize },
  { id: "uffd-open", title: "a userfaultfd (/dev/userfaultfd, then the syscall)", needs: null, run: checkOpen },
  { id: "uffd-api", title: "UFFDIO_API handshake and REGISTER/UNREGISTER", needs: "route", run: checkApi },
  {
    id: "uffd-features",
    title: "userfault features as QEMU applies them (THREAD_ID)",
    needs: "features",
    run: checkFeatures,
  },
  ...REGISTRATIONS.map((spec): Step => ({ ...spec, needs: "features", run: (p) => register(p, spec) })),
  { id: "criu-events", title: "non-cooperative events (CRIU lazy pages)", needs: "features", run: checkCriu },
  { id: "round-trip", title: "real faults served with UFFDIO_COPY, bytes verified", needs: null, run: checkRoundTrip },
  { id: "run-as", title: "the user QEMU runs as", needs: null, run: checkRunAs },
];

/** Runs every check in order; a check whose prerequisite failed is skipped, saying which. */
export function runChecks(sys: Sys, facts: Facts, opts: Options): { checks: Check[]; probe: Probe } {
  const probe: Probe = { sys, facts, opts, route: null, userModeOnly: false, features: null };
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
  const known = Object.values(UFFD_FEATURE).reduce((m, b) => m | b, 0n);
  const named = Object.fromEntries(Object.entries(UFFD_FEATURE).map(([n, b]) => [n, (mask & b) !== 0n]));
  return { ...named, unknown: `0x${(mask & ~known).toString(16)}` };
}

export const CAPABILITIES = [
  "postcopy-ram",
  "postcopy-hugetlbfs",
  "postcopy-shmem",
  "background-snapshot",
  "postcopy-blocktime",
  "criu-lazy-pages",
  "firecracker-uffd",
] as const;
export type Capability = (typeof CAPABILITIES)[number];

/** What each consumer can do here: a pure function of the checks and the feature mask. */
export function capabilities(checks: Check[], features: bigint | null): Record<Capability, boolean> {
  const ok = (id: string) => ["pass", "warn"].includes(checks.find((c) => c.id === id)?.status ?? "skip");
  const has = (name: string) => features !== null && (features & UFFD_FEATURE[name]) !== 0n;
  const trips = tripsOf(checks);
  const served = (key: string) => trips[key]?.ok === true;
  // QEMU needs user-mode and kernel-mode (KVM, vhost) missing faults served.
  const ram =
    ["page-size", "uffd-open", "uffd-api", "uffd-features", "register-anon"].every(ok) &&
    served("user-read") &&
    served("kernel-write");
  return {
    "postcopy-ram": ram,
    "postcopy-hugetlbfs": ram && ok("register-hugetlb"),
    "postcopy-shmem": ram && ok("register-shmem"),
    "background-snapshot": ok("uffd-open") && ok("uffd-api") && ok("write-protect") && served("write-protect"),
    "postcopy-blocktime": ram && has("THREAD_ID"),
    "criu-lazy-pages": ok("criu-events"),
    "firecracker-uffd": ok("uffd-open") && ok("register-anon") && has("EVENT_REMOVE"),
  };
}

export type Diagnosis = { cause: string; summary: string; evidence: string[]; fix: string[] };
type Seen = { f: Facts; r: Record<string, string>; checks: Check[] };
/** The first kernel with each feature or ioctl the capabilities need. */
const SINCE: Record<string, string> = {
  UFFD_FEATURE_PAGEFAULT_FLAG_WP: "5.7",
  UFFD_FEATURE_EVENT_FORK: "4.11",
  UFFD_FEATURE_EVENT_REMAP: "4.11",
  UFFD_FEATURE_EVENT_REMOVE: "4.11",
  UFFD_FEATURE_MISSING_HUGETLBFS: "4.11",
  UFFD_FEATURE_MISSING_SHMEM: "4.11",
  UFFD_FEATURE_EVENT_UNMAP: "4.11",
  UFFD_FEATURE_THREAD_ID: "4.14",
  UFFDIO_WRITEPROTECT: "5.7",
};
const PERSIST = "echo vm.unprivileged_userfaultfd=1 > /etc/sysctl.d/99-userfaultfd.conf";
const CONTAINER_DEVICE =
  "docker run --device /dev/userfaultfd ...   # or podman run --device: QEMU 8.0+ opens it first";
const acl = (f: Facts) => `setfacl -m u:${f.user}:rw ${DEVICE}   # QEMU 8.0+ opens ${DEVICE} first`;
const denied = (r: Record<string, string>) =>
  `userfaultfd(2): ${r.syscall}, with UFFD_USER_MODE_ONLY: ${r["user-mode-only"]}`;

/** Root causes, in the order a reader should act on them: when() returns evidence, or null. */
const CAUSES: Array<{
  cause: string;
  summary: string;
  when: (s: Seen) => string[] | null;
  fix: (s: Seen) => string[];
}> = [
  {
    cause: "gvisor",
    summary: "gVisor's kernel does not implement userfaultfd",
    when: ({ f, r }) =>
      f.gvisor && r.syscall !== "ok" ? [`/proc/version: gVisor (release ${f.kernel})`, denied(r)] : null,
    fix: () => [
      "docker run --runtime=runc ...   # not --runtime=runsc",
      "kubectl edit pod ...   # drop runtimeClassName: gvisor",
    ],
  },
  {
    cause: "seccomp",
    summary: "a seccomp filter denies userfaultfd(2)",
    when: ({ f, r }) =>
      f.seccomp === 2 && !f.gvisor && r.syscall !== "ok" && r["user-mode-only"] !== "ok"
        ? [`Seccomp: 2 in /proc/self/status (${f.seccompFilters} filters)`, denied(r)]
        : null,
    fix: () => [
      CONTAINER_DEVICE,
      "docker run --security-opt seccomp=PROFILE.json ...   # PROFILE.json allowing userfaultfd",
      "podman run --security-opt seccomp=PROFILE.json ...",
      "kubectl: securityContext.seccompProfile: {type: Localhost, localhostProfile: PROFILE.json}",
    ],
  },
  {
    cause: "no-kernel-support",
    summary: "this kernel has no userfaultfd (CONFIG_USERFAULTFD off, or before 4.3)",
    when: ({ f, r }) =>
      r.syscall === "ENOSYS" && f.seccomp !== 2 && !f.gvisor
        ? [
            `userfaultfd(2): ENOSYS without a seccomp filter`,
            `kernel ${f.kernel}`,
            `vm.unprivileged_userfaultfd: ${f.unprivilegedUserfaultfd ?? "absent"}`,
          ]
        : null,
    fix: () => [
      "grep USERFAULTFD /boot/config-$(uname -r)   # want CONFIG_USERFAULTFD=y",
      "boot a kernel built with CONFIG_USERFAULTFD=y",
    ],
  },
  {
    cause: "user-namespace",
    summary: "CAP_SYS_PTRACE is held only inside a user namespace, where userfaultfd ignores it",
    when: ({ f, r }) =>
      r.syscall === "EPERM" && f.userNamespace && f.capSysPtrace && (r["user-mode-only"] === "ok" || f.seccomp !== 2)
        ? [`/proc/self/uid_map: ${f.uidMap}`, denied(r)]
        : null,
    fix: () => [CONTAINER_DEVICE, "sysctl -w vm.unprivileged_userfaultfd=1   # on the host", PERSIST],
  },
  {
    cause: "unprivileged-userfaultfd",
    summary: "vm.unprivileged_userfaultfd is 0 and this user lacks CAP_SYS_PTRACE",
    when: ({ f, r }) =>
      r.syscall === "EPERM" && !(f.userNamespace && f.capSysPtrace) && (r["user-mode-only"] === "ok" || f.seccomp !== 2)
        ? [
            denied(r),
            `vm.unprivileged_userfaultfd = ${f.unprivilegedUserfaultfd}`,
            `CAP_SYS_PTRACE: not held by ${f.user} (uid ${f.uid})`,
          ]
        : null,
    fix: ({ f, r }) => [
      ...(f.devnode && r.device !== "ok" ? [acl(f)] : []),
      "sysctl -w vm.unprivileged_userfaultfd=1",
      PERSIST,
      `setcap cap_sys_ptrace+ep "$(command -v qemu-system-${f.arch})"   # broad: also lets QEMU ptrace`,
    ],
  },
  {
    cause: "selinux",
    summary: "SELinux is enforcing and denied userfaultfd",
    when: ({ f, r }) =>
      f.selinux === "enforcing" && [r.syscall, r.device].includes("EACCES")
        ? ["/sys/fs/selinux/enforce: 1", `${DEVICE}: ${r.device}`, denied(r)]
        : null,
    fix: () => [
      "ausearch -m avc -ts recent | grep userfaultfd",
      "ausearch -m avc -ts recent | audit2allow -M userfaultfd-local && semodule -i userfaultfd-local.pp",
    ],
  },
  {
    cause: "devnode-missing",
    summary: `${DEVICE} is not there, and the syscall is refused`,
    when: ({ f, r }) =>
      r.device === "ENOENT" && r.syscall !== "ok"
        ? [
            `${DEVICE}: ENOENT`,
            f.miscMinor === null
              ? "no userfaultfd in /proc/misc: the device came in Linux 6.1"
              : `/proc/misc: ${f.miscMinor} userfaultfd: the kernel has it, this /dev does not`,
          ]
        : null,
    fix: ({ f }) =>
      f.miscMinor === null
        ? ["sysctl -w vm.unprivileged_userfaultfd=1   # before 6.1 the syscall is the only way", PERSIST]
        : [`mknod -m 0660 ${DEVICE} c 10 ${f.miscMinor} && chgrp kvm ${DEVICE}`, CONTAINER_DEVICE],
  },
  {
    cause: "devnode-permission",
    summary: `${DEVICE} does not let this user in, and the syscall is refused`,
    when: ({ f, r }) =>
      ["EACCES", "EPERM"].includes(r.device) && r.syscall !== "ok" && f.devnode
        ? [
            `${DEVICE}: ${f.devnode.mode} ${f.devnode.owner} ${f.devnode.group}`,
            `open as ${f.user} (uid ${f.uid}): ${r.device}`,
          ]
        : null,
    fix: ({ f }) => [
      acl(f),
      `echo 'KERNEL=="userfaultfd", GROUP="kvm", MODE="0660"' > /etc/udev/rules.d/99-userfaultfd.rules && udevadm control --reload && udevadm trigger --subsystem-match=misc`,
      `usermod -aG kvm ${f.user}`,
    ],
  },
  {
    cause: "missing-feature",
    summary: "the kernel lacks a feature or ioctl a capability needs",
    when: ({ checks }) => {
      const short = checks.filter((c) => (c.missing as string[] | undefined)?.length);
      return short.length ? short.map((c) => `${c.id}: ${c.detail}`) : null;
    },
    fix: ({ f, checks }) =>
      [...new Set(checks.flatMap((c) => (c.missing as string[] | undefined) ?? []))].map(
        (name) => `boot Linux ${SINCE[name] ?? "4.3"} or later for ${name} (this is ${f.kernel})`,
      ),
  },
  {
    cause: "hugepages-not-reserved",
    summary: "no huge pages are reserved: hugetlbfs-backed guests get none",
    when: ({ f, checks }) =>
      checks.some((c) => c.id === "register-hugetlb" && c.status === "warn")
        ? [`vm.nr_hugepages = ${f.nrHugepages}`]
        : null,
    fix: () => [
      "sysctl -w vm.nr_hugepages=1024   # 2 GiB of 2 MiB pages: size it to the guests' RAM",
      "echo vm.nr_hugepages=1024 > /etc/sysctl.d/80-hugepages.conf",
    ],
  },
];

/** Why, and what to run: a pure function of the facts and the checks. */
export function diagnose(facts: Facts, checks: Check[]): Diagnosis[] {
  const seen = { f: facts, r: routesOf(checks), checks };
  return CAUSES.flatMap(({ cause, summary, when, fix }) => {
    const evidence = when(seen);
    return evidence ? [{ cause, summary, evidence, fix: fix(seen) }] : [];
  });
}

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
  qemu?: QemuAnswer;
  bench?: Bench | Bench[] | { error: string };
};

/** The kernel-mode write trip decides for QEMU: its result and time, when the check ran. */
function roundTripSummary(checks: Check[]): Report["roundTrip"] {
  const trips = tripsOf(checks);
  const served = trips["kernel-write"];
  return served && { ok: Boolean(trips["user-read"]?.ok && served.ok), ns: served.ns };
}

/** --bench on base pages, and on huge pages when enough are free; an error names what stopped it. */
function benchAll(p: Probe, progress?: (done: number) => void): Report["bench"] {
  const route = servingRoute(p);
  if (!route) return { error: "no userfaultfd could be opened" };
  const anon = MAP_PRIVATE | MAP_ANONYMOUS;
  const base = bench(p, route, p.opts.bench, p.facts.pageSize, anon, progress);
  if (typeof base === "string") return { error: base };
  const { hugePageSize, freeHugepages } = p.facts;
  if (!hugePageSize || !freeHugepages || freeHugepages < 2) return base;
  const huge = bench(p, route, Math.min(p.opts.bench, freeHugepages), hugePageSize, anon | MAP_HUGETLB, progress);
  return typeof huge === "string" ? [base] : [base, huge];
}

/** Where QEMU is looked for when --qemu names none: qemu-system-ARCH on $PATH, then these. */
const QEMU_PLACES = ["/usr/libexec/qemu-kvm", "/usr/bin/qemu-kvm"];
const QMP = [
  { execute: "qmp_capabilities" },
  { execute: "migrate-set-capabilities", arguments: { capabilities: [{ capability: "postcopy-ram", state: true }] } },
  { execute: "quit" },
]
  .map((c) => `${JSON.stringify(c)}\n`)
  .join("");
export type QemuAnswer = {
  path: string;
  version: string;
  accepts: boolean;
  message: string;
  agrees?: boolean;
  why?: string;
};

/**
 * The installed QEMU's own answer: an incoming VM with no guest, no disk and no network, asked over
 * QMP on stdio to turn postcopy-ram on, as `migrate-set-capabilities` does before a migration.
 */
export function askQemu(path: string, timeoutMs: number): QemuAnswer | string {
  const args = [
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
  let run: ReturnType<typeof Bun.spawnSync>;
  try {
    run = Bun.spawnSync([path, ...args], {
      stdin: new TextEncoder().encode(QMP),
      timeout: timeoutMs,
      killSignal: "SIGKILL",
    });
  } catch (e) {
    return (e as Error).message;
  }
  if (run.exitedDueToTimeout) return `no answer within ${timeoutMs} ms: killed`;
  const [out, err] = [run.stdout?.toString() ?? "", run.stderr?.toString() ?? ""];
  const replies = out.split("\n").flatMap((line) => {
    try {
      return [JSON.parse(line)];
    } catch {
      return [];
    }
  });
  const v = replies.find((r) => r.QMP)?.QMP.version.qemu;
  const [, answer] = replies.filter((r) => "return" in r || "error" in r);
  if (!v || !answer) return `no QMP answer (exit status ${run.exitCode}): ${err.trim().split("\n")[0]}`;
  // QEMU before 8.0 says why on stderr ("postcopy_ram_supported_by_host: userfaultfd not available: ...").
  const why = err.split("\n").filter((l) => /postcopy|userfault/i.test(l));
  const message = answer.error ? [answer.error.desc, ...why].join(": ") : "";
  return { path, version: `${v.major}.${v.minor}.${v.micro}`, accepts: !answer.error, message };
}

/** The --qemu check: QEMU's answer beside the probe's, and why they differ when the reason is known. */
function checkQemu(
  sys: Sys,
  facts: Facts,
  checks: Check[],
  probeSays: boolean,
  given: string | true,
  timeoutMs: number,
) {
  const head = { id: "qemu", title: "QEMU's own answer (migrate-set-capabilities)" };
  const looked = [`qemu-system-${facts.arch} on $PATH`, ...QEMU_PLACES];
  const path =
    given === true
      ? (Bun.which(`qemu-system-${facts.arch}`, { PATH: process.env.PATH ?? "" }) ??
        QEMU_PLACES.find((q) => sys.stat(q).ret === 0))
      : given;
  if (!path) return { check: result(head, "skip", `no QEMU found: looked for ${looked.join(", ")}`) };
  const answer = askQemu(path, timeoutMs);
  if (typeof answer === "string") return { check: result(head, "fail", `${path}: ${answer}`) };
  const said = `QEMU ${answer.version} ${answer.accepts ? "accepts" : "rejects"} postcopy-ram${answer.accepts ? "" : `: ${answer.message}`}`;
  answer.agrees = answer.accepts === probeSays;
  const routes = routesOf(checks);
  if (!answer.agrees)
    answer.why =
      probeSays && routes.device === "ok" && routes.syscall !== "ok" && Number(answer.version.split(".")[0]) < 8
        ? `QEMU ${answer.version} predates 8.0 and opens only userfaultfd(2), refused here (${routes.syscall}): this QEMU will fail; QEMU 8.0+ or one of the fixes would work`
        : "the reason is not known to the probe: QEMU's answer decides";
  const detail = answer.agrees
    ? `${said}, as the probe says`
    : `${said}; THE PROBE SAID ${probeSays ? "YES" : "NO"}: ${answer.why}`;
  return { check: result(head, answer.accepts && answer.agrees ? "pass" : "fail", detail), answer };
}

/** The whole probe, without printing: the report the renderers turn into text. */
export function probe(sys: Sys, facts: Facts, opts: Options, progress?: (done: number) => void): Report {
  const { checks, probe: p } = runChecks(sys, facts, opts);
  const caps = capabilities(checks, p.features);
  const qemu =
    opts.qemu === null ? undefined : checkQemu(sys, facts, checks, caps["postcopy-ram"], opts.qemu, opts.qemuMs);
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

const COLORS: Record<Status, number> = { pass: 32, warn: 33, fail: 31, skip: 90 };
const paint = (on: boolean, code: number, text: string) => (on ? `\x1b[${code}m${text}\x1b[0m` : text);
const WIDTH = 72;

/** The human report, in the style of virt-host-validate. */
export function renderHuman(report: Report, opts: Pick<Options, "quiet" | "color">): string {
  const lines: string[] = [];
  const { host } = report;
  if (!opts.quiet)
    lines.push(`postcopy-probe ${report.version}: Linux ${host.kernel} ${host.arch}, ${host.user} (uid ${host.uid})`);
  for (const c of report.checks) {
    if (opts.quiet && (c.status === "pass" || c.status === "skip")) continue;
    const label = `Checking for ${c.title}`.padEnd(WIDTH);
    const status = paint(opts.color, COLORS[c.status], c.status.toUpperCase());
    lines.push(`${label}: ${status}${c.detail ? ` (${c.detail})` : ""}`);
  }
  if (!opts.quiet) {
    lines.push("", "Capabilities:");
    for (const [name, yes] of Object.entries(report.capabilities))
      lines.push(`  ${name.padEnd(22)}${paint(opts.color, yes ? COLORS.pass : COLORS.fail, yes ? "yes" : "no")}`);
    for (const b of [report.bench ?? []].flat()) lines.push("", benchLine(b));
    const count = (s: Status) => report.checks.filter((c) => c.status === s).length;
    lines.push("", `pass=${count("pass")}, warn=${count("warn")}, fail=${count("fail")}, skip=${count("skip")}`);
  }
  if (report.diagnosis.length) lines.push("", "Why / Fix:");
  for (const d of report.diagnosis) {
    lines.push(`  ${d.cause}: ${d.summary}`);
    for (const e of d.evidence) lines.push(`    because ${e}`);
    for (const f of d.fix) lines.push(`    $ ${f}`);
  }
  const verdict = report.postcopy
    ? paint(opts.color, COLORS.pass, "SUPPORTED")
    : paint(opts.color, COLORS.fail, "NOT SUPPORTED");
  lines.push(`Postcopy live migration (QEMU postcopy-ram): ${verdict} for ${host.user} (uid ${host.uid})`);
  if (report.qemu?.agrees === false)
    lines.push(
      paint(
        opts.color,
        COLORS.fail,
        `QEMU ${report.qemu.version} (${report.qemu.path}) DISAGREES and decides the exit status: ${report.qemu.why}`,
      ),
    );
  const { capabilities: wanted, ok } = report.required;
  if (wanted.join() !== "postcopy-ram")
    lines.push(
      `Required ${wanted.join(", ")}: ${paint(opts.color, ok ? COLORS.pass : COLORS.fail, ok ? "YES" : "NO")}`,
    );
  return `${lines.join("\n")}\n`;
}

const benchLine = (b: Bench | { error: string }) =>
  "error" in b
    ? `Benchmark: could not run (${b.error})`
    : `Benchmark (${b.faults} faults on ${b.pageSize} B pages): p50 ${(b.p50Ns / NS_PER_US).toFixed(1)} µs, ` +
      `p99 ${(b.p99Ns / NS_PER_US).toFixed(1)} µs, ${b.pagesPerSec} pages/s, ${(b.bytesPerSec / 2 ** 20).toFixed(0)} MiB/s`;

export const renderJson = (report: Report) => `${JSON.stringify(report, null, 2)}\n`;

/** A label value in the exposition format: backslash, quote and newline escaped. */
const label = (value: unknown) => String(value).replace(/[\\"\n]/g, (c) => (c === "\n" ? "\\n" : `\\${c}`));
/** One gauge with its HELP and TYPE lines; each sample is [labels, value]. */
const gauge = (name: string, help: string, samples: Array<[string, number]>) => [
  `# HELP postcopy_probe_${name} ${help}`,
  `# TYPE postcopy_probe_${name} gauge`,
  ...samples.map(([l, v]) => `postcopy_probe_${name}${l} ${v}`),
];
const STATUSES: Status[] = ["pass", "warn", "fail", "skip"];

/** Metrics for node_exporter's textfile collector: alert on postcopy_probe_supported == 0. */
export function renderPrometheus(report: Report): string {
  const { host } = report;
  const bool = (b: unknown) => (b === true ? 1 : 0);
  return (
    [
      ...gauge("supported", "1 when QEMU can use postcopy-ram here, in the probed context.", [
        ["", bool(report.postcopy)],
      ]),
      ...gauge(
        "capability",
        "1 when a userfaultfd consumer can work here.",
        Object.entries(report.capabilities).map(([c, ok]) => [`{capability="${c}"}`, bool(ok)]),
      ),
      ...gauge(
        "check",
        "1 on the status each check has, 0 on the others.",
        report.checks.flatMap((c) =>
          STATUSES.map((s): [string, number] => [`{id="${c.id}",status="${s}"}`, bool(c.status === s)]),
        ),
      ),
      ...gauge(
        "feature",
        "1 when the kernel offers the UFFD_FEATURE_* bit.",
        Object.entries(report.features)
          .filter(([n]) => n !== "unknown")
          .map(([n, on]) => [`{name="${n}"}`, bool(on)]),
      ),
      ...(report.roundTrip
        ? gauge("round_trip_seconds", "The kernel-mode write fault round trip, thread start to join.", [
            ["", report.roundTrip.ns / 1e9],
          ])
        : []),
      ...(report.qemu
        ? gauge("qemu_accepts", "1 when the installed QEMU itself accepts postcopy-ram.", [
            [`{version="${label(report.qemu.version)}",path="${label(report.qemu.path)}"}`, bool(report.qemu.accepts)],
          ])
        : []),
      ...gauge("info", "The probe's version and the context it answered for.", [
        [
          `{version="${label(report.version)}",kernel="${label(host.kernel)}",user="${label(host.user)}",uid="${host.uid}"}`,
          1,
        ],
      ]),
    ].join("\n") + "\n"
  );
}

const RENDERERS = { human: renderHuman, json: renderJson, prometheus: renderPrometheus };

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

type Parsed = ReturnType<typeof defaults>;
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

/** The command line, as data: names, the value (in brackets when optional), the help, the effect. */
const OPTIONS: Array<{ names: string[]; value?: string; help: string; set: (o: Parsed, v: string) => unknown }> = [
  {
    names: ["--json"],
    help: "print the postcopy-probe/1 JSON document, nothing else",
    set: (o) => (o.format = "json"),
  },
  {
    names: ["--format"],
    value: "FORMAT",
    help: "human (default), json, or prometheus (node_exporter textfile collector)",
    set: (o, v) => (o.format = oneOf(v, Object.keys(RENDERERS) as Array<keyof typeof RENDERERS>, "format")),
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
    set: (o, v) =>
      (o.targetPageSize = whole(
        v,
        (n) => n > 0 && (n & (n - 1)) === 0,
        "target page size",
        "a power of two in bytes, such as 4096",
      )),
  },
  {
    names: ["--bench"],
    value: "[N]",
    help: `also serve N faults (default ${BENCH_FAULTS}) as fast as possible: p50, p99, pages/s`,
    set: (o, v) =>
      (o.bench = v
        ? whole(v, (n) => n >= 2 && n <= BENCH_MAX, "fault count", `a whole number from 2 to ${BENCH_MAX}`)
        : BENCH_FAULTS),
  },
  { names: ["-h", "--help"], help: "this text", set: (o) => (o.help = true) },
  { names: ["-V", "--version"], help: "the version", set: (o) => (o.version = true) },
];
const USAGE = `Usage: postcopy-probe ${OPTIONS.map((o) => `[${o.names.at(-1)}${o.value ? ` ${o.value}` : ""}]`).join(" ")}`;
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
    const [name, inline] =
      argv[i].startsWith("--") && argv[i].includes("=") ? argv[i].split(/=(.*)/s) : [argv[i], undefined];
    const option = OPTIONS.find((o) => o.names.includes(name));
    if (!option) throw new UsageError(`Unknown option "${argv[i]}"`);
    const optional = option.value?.startsWith("[");
    // An optional value is the next argument only when that is not an option itself.
    const next =
      option.value && inline === undefined && !(optional && argv[i + 1]?.startsWith("-")) ? argv[++i] : undefined;
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
  const groups = rows(sys, "/etc/group")
    .filter((g) => g[3]?.split(",").includes(name))
    .map((g) => g[2]);
  return `${name}:${uid}:${gid}:${[gid, ...groups].join(",")}`;
}

/** The whole probe again in a child that becomes the user first; its output and status are the answer. */
function runAs(ids: string, argv: string[]) {
  // A compiled binary is its own script; `bun probe.ts` needs the script named.
  const self = Bun.main.startsWith("/$bunfs/") ? [process.execPath] : [process.execPath, Bun.main];
  const child = Bun.spawnSync([...self, ...argv], {
    env: { ...process.env, [AS_USER]: ids },
    stdio: ["inherit", "inherit", "inherit"],
  });
  return child.exitCode ?? 2;
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
    sys = loadSys();
    const as = process.env[AS_USER];
    if (opts.user && !as) return void (process.exitCode = runAs(userIds(sys, opts.user), argv));
    if (as) opts.user = becomeUser(sys, as);
  } catch (e) {
    console.error(`postcopy-probe: ${(e as Error).message}${e instanceof UsageError ? `\n${USAGE}` : ""}`);
    process.exitCode = 2;
    return;
  }
  opts.color = !process.env.NO_COLOR && sys.isatty(1) === 1;
  const progress =
    opts.bench && sys.isatty(2) ? (n: number) => sys.write(2, `\rbench: ${n}/${opts.bench} faults`) : undefined;
  const report = probe(sys, readFacts(sys), opts, progress);
  if (progress) sys.write(2, "\r\x1b[K");
  console.log(RENDERERS[opts.format](report, opts).trimEnd());
  process.exitCode = report.required.ok ? 0 : 1;
}

if (import.meta.main) main();
