/**
 * What the entry point (probe.ts) and the option files both use, so that none of them imports the entry point:
 * helpers (quoting, sanitizing, /proc fields), and the kernel-facing steps every consumer of a uffd goes through —
 * the routes to a uffd, QEMU's registration sequence, and real faults served on a native thread.
 *
 * ```ts
 * import { routeAnswers, sh } from "./shared.ts";
 * const answers = routeAnswers(sys, facts); // { "device-node": "ok", device: "ok", syscall: "EPERM", ... }
 * ```
 */
import type { R, Sys } from "./ffi.ts";
import * as K from "./ffi.ts";
import type * as T from "./types.ts";
import type { Answers, Capability, Facts, Faulting, Judged, Progress, Route, Seen, Status, Unjudged } from "./types.ts";

export const VERSION = "0.1.0";
export const SCHEMA = "postcopy-probe/1";
export const DEVICE = "/dev/userfaultfd";
export const CAP_SYS_PTRACE = 19n;
/** The statuses a check can have, in the order the report counts them. */
export const STATUSES: Status[] = ["pass", "warn", "fail", "skip"];
/** The initial user namespace's uid_map, as uidMapOf() reads it. */
export const INITIAL_UID_MAP = "0 0 4294967295";

// ── Helpers ──

/** A wrong command line, user or process: exit 2 with the message and the usage line. */
export class UsageError extends Error {}
/** --pid's process is no QEMU (another program, a kernel thread, the probe itself): --all leaves it out. */
export class NotQemu extends Error {}
/** An argument as a message shows it: quoted, control characters escaped, cut at 60 characters. */
export const quoted = (arg: string) => JSON.stringify(arg.length > 60 ? `${arg.slice(0, 60)}…` : arg);
/** `value` as one shell word: as it is when plainly safe, else in single quotes (a fix is pasted into a root shell). */
export const sh = (value: string) => (/^[\w@%+=:,./-]+$/.test(value) ? value : `'${value.replaceAll("'", `'\\''`)}'`);
/**
 * Control, format (bidirectional) and line-separator characters as escapes: nothing a target wrote (a path, QEMU's
 * words) reaches a terminal as it is.
 */
export const shown = (text: string) =>
  text.replace(/[\p{Cc}\p{Cf}\p{Zl}\p{Zp}]/gu, (c) => ESCAPES[c] ?? escaped(c.codePointAt(0)!));
const escaped = (n: number) => (n < 0x100 ? `\\x${n.toString(16).padStart(2, "0")}` : `\\u{${n.toString(16)}}`);
const ESCAPES: Record<string, string> = { "\n": "\\n", "\t": "\\t", "\r": "\\r" };
/**
 * The directory the probe was started in: its cwd, unless it works in `/` (its shebang's --cwd=/, or main()), where
 * PWD names it. Relative paths on the command line are from there.
 */
export const workingDirectory = (env: Record<string, string | undefined> = process.env) =>
  process.cwd() === "/" && env.PWD?.startsWith("/") ? env.PWD : process.cwd();
/** $PATH without its relative entries ("", "."): nothing is looked for in the directory the probe was run from. */
export const absolutePath = (env: Record<string, string | undefined> = process.env) =>
  (env.PATH ?? "")
    .split(":")
    .filter((dir) => dir.startsWith("/"))
    .join(":");
/**
 * The command that starts the probe itself again, to be run from `/`: a compiled binary is its own (built to read
 * nothing of its working directory); else Bun, told to read no bunfig.toml or .env and to start in `/`.
 */
export const self = () =>
  Bun.main.startsWith("/$bunfs/") ? [process.execPath] : [process.execPath, ...AUTOLOADS_OFF, Bun.main];
const AUTOLOADS_OFF = ["--config=/dev/null", "--no-env-file", "--cwd=/"];
/** What a process of the probe's own (a child, a launcher) has in its environment: Bun writes no transpiler cache. */
export const SELF_ENV = { BUN_RUNTIME_TRANSPILER_CACHE_PATH: "0" };
/** The rows of a colon-separated database such as /etc/passwd or /etc/group. */
export const rows = (sys: Sys, path: string) => (sys.readText(path) ?? "").split("\n").map((l) => l.split(":"));
/** The value after `key:` in a /proc file such as /proc/meminfo, on its own line only: an empty value is "". */
export const field = (text: string | null, key: string) =>
  text?.match(new RegExp(`^${key}:[ \\t]*(.*)$`, "m"))?.[1] ?? null;
/** A whole number from text, or null when the text is missing or not one: never a wrong fact. */
export const whole = (text: string | null | undefined) => (text?.trim().match(/^-?\d+$/) ? Number(text) : null);
/** The first line of a uid_map, spaces squeezed: "0 0 4294967295" in the initial user namespace. */
export const uidMapOf = (text: string | null) => text?.trim().split("\n")[0].trim().replace(/\s+/g, " ") ?? null;
/** A capability bit of a CapEff mask, or null when the mask could not be read. */
export const capBit = (mask: string | null, bit: bigint) =>
  mask?.match(/^[0-9a-f]{1,16}$/i) ? (BigInt(`0x${mask}`) >> bit) % 2n === 1n : null;
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
/** Whether `done` settles within `ms`; the timer goes with it, so nothing is left to keep the process up. */
export async function within(done: Promise<unknown>, ms: number) {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const late = new Promise<boolean>((resolve) => (timer = setTimeout(() => resolve(false), ms)));
  const settled = await Promise.race([done.then(() => true), late]);
  clearTimeout(timer);
  return settled;
}
/** Started with stdout closed, Bun puts /dev/null there, close-on-exec: no stdout it inherited ever is. */
export const stdoutClosed = (sys: Sys) =>
  (Number.parseInt(field(sys.readText("/proc/self/fdinfo/1"), "flags") ?? "0", 8) & K.O_CLOEXEC) !== 0;
/** Text from a child, made safe for a one-line report: no control characters, at most 200 characters. */
export const sanitize = (text: string) => {
  const flat = text.replace(/\p{Cc}+/gu, " ").trim();
  return flat.length > 200 ? `${flat.slice(0, 200)}…` : flat;
};
/** Why each of `caps` could not be judged (`unknown`), as the error says it ("postcopy-ram: …"), and settles. */
export const unanswered = (caps: Capability[], unknown: Judged["unknown"]): Unjudged[] =>
  caps.flatMap((c) => (unknown[c] ? [[`${c}: ${unknown[c][0]}`, unknown[c][1]] as Unjudged] : []));
/** A failed call, `UFFDIO_REGISTER: EINVAL`. */
export const said = (call: string, r: R) => `${call}: ${K.errnoName(r.errno)}`;
/** What userfaultfd(2) answered, with and without UFFD_USER_MODE_ONLY: a line of evidence. */
export const answered = ({ a }: Pick<Seen, "a">) => {
  const umo = a["user-mode-only"];
  const old = umo === "EINVAL" ? " (the flag came in Linux 5.11)" : "";
  return `userfaultfd(2): ${a.syscall}, with UFFD_USER_MODE_ONLY: ${umo}${old}`;
};

// ── Routes: the ways to a uffd ──

/** The routes, a kernel-mode uffd first: the checks use the first that opens. */
export const ROUTES: Route[] = ["device", "syscall", "user-mode-only"];
/** The probe's own uffds: close-on-exec, and non-blocking for the loop that serves their faults. */
const UFFD_FLAGS = K.O_CLOEXEC | K.O_NONBLOCK;
/** Where the device is, or the errno its route answers without an open(). */
type Device = Pick<Facts, "device" | "deviceSays">;

/** A new uffd through one route; the device's own fd is closed before returning, its open() told to `node`. */
export function openRoute(sys: Sys, facts: Device, route: Route, node?: (r: R) => void): R {
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

/** What each route answers here: each opened once, then closed; the device node's open() told apart. */
export function routeAnswers(sys: Sys, facts: Device): Answers {
  const a: Answers = { "device-node": "", device: "", syscall: "", "user-mode-only": "" };
  for (const route of ROUTES) {
    const node = (r: R) => (a["device-node"] = r.ret < 0 ? K.errnoName(r.errno) : "ok");
    const r = openRoute(sys, facts, route, node);
    a[route] = r.ret < 0 ? K.errnoName(r.errno) : "ok";
    if (r.ret >= 0) sys.close(r.ret);
  }
  return a;
}

// ── Consumers: which takes which route, and what each capability needs ──

/** The routes a consumer tries, given what each answered: a fix on any could open it; it takes the last one. */
type Consumer = (a: T.Answers) => T.Route[];
/** /dev/userfaultfd first; when the node's open() fails as `fallsBack` says, the syscall instead. */
const deviceFirst =
  (fallsBack: (node: string) => boolean): Consumer =>
  (a) =>
    fallsBack(a["device-node"]) ? ["device", "syscall"] : ["device"];
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
  // Cloud Hypervisor v52+ (vmm/src/uffd.rs): the device, and the syscall on any error of it, its open or its ioctl.
  "cloud-hypervisor": (a) => (a.device === "ok" ? ["device"] : ["device", "syscall"]),
} satisfies Record<T.ConsumerName, Consumer>;
/** What a consumer gets: the answer on the route it takes. */
export const answerOf = (consumer: T.ConsumerName, a: T.Answers) => a[CONSUMERS[consumer](a).at(-1)!];
/** The QEMU consumer that decides: the installed (or given) QEMU's version; 8.0 and later when unknown. */
export const qemuConsumer = (q: T.Qemu | null): T.ConsumerName => ((q?.major ?? 8) < 8 ? "qemu<8.0" : "qemu>=8.0");

/** The kernel's capability and sysctl gate is open: it would not say EPERM (the sysctl at 1, or CAP_SYS_PTRACE). */
const permitted = (f: T.Facts) =>
  f.unprivilegedUserfaultfd === 1 || (f.capSysPtrace === true && f.userNamespace === false);
export const filtered = (f: T.Facts) => f.seccomp === 2 && !f.gvisor;
/** Whether a version ("6.12.117+deb13-amd64" of a kernel, "10.0.13" of a QEMU) is `major`.`minor` or later. */
export const atLeast = (version: string, major: number, minor: number) => {
  const [a, b] = version.split(/[.+-]/).map((n) => Number.parseInt(n, 10) || 0);
  return a > major || (a === major && b >= minor);
};
/** A seccomp filter, not the kernel, refuses userfaultfd(2): ENOSYS, or EPERM where the kernel would allow it. */
export function filterDeniesSyscall(f: T.Facts, a: T.Answers) {
  // UFFD_USER_MODE_ONLY (5.11+) is never refused by the kernel itself: EPERM for it is a filter's.
  const userModeOnlyExists = atLeast(f.kernel, 5, 11);
  const epermIsTheFilters = permitted(f) || (a["user-mode-only"] === "EPERM" && userModeOnlyExists);
  return filtered(f) && (a.syscall === "ENOSYS" || (a.syscall === "EPERM" && epermIsTheFilters));
}
/** libvirt gives its QEMU a /dev of its own holding only what cgroup_device_acl lists. */
export const libvirtHidesDevice = (f: T.Facts) => !!f.libvirt?.deviceAcl && !f.libvirt.deviceAcl.includes(DEVICE);
/** What the SELinux contexts of a scope refuse (selinux.ts): --pid's and --context's every consumer, QEMU's QEMU. */
export const deniedIn = (f: T.Facts, scope: T.Domain["scope"]): Partial<T.Answers> =>
  Object.assign({}, ...(f.domains ?? []).filter((d) => d.scope === scope).map((d) => d.denied));
/** `a` where the contexts of `scope` refuse what opened: what the kernel asks first (the mode, a device cgroup, the
 * sysctl) keeps its own answer. */
export function refusedIn(a: T.Answers, f: T.Facts, scope: T.Domain["scope"]): T.Answers {
  const denied: Partial<T.Answers> = deniedIn(f, scope);
  const route = (r: keyof T.Answers) => (a[r] === "ok" && denied[r] ? denied[r] : a[r]);
  return {
    "device-node": route("device-node"),
    device: route("device"),
    syscall: route("syscall"),
    "user-mode-only": route("user-mode-only"),
  };
}
/**
 * The answers as the deciding QEMU gets them: a cap_sys_ptrace file capability opens what only the sysctl refused;
 * libvirt's device list and the SELinux contexts QEMU is started in refuse what they refuse.
 */
export function qemuAnswers(a: T.Answers, f: T.Facts, qemu: T.Qemu | null): T.Answers {
  const onlySysctl = a.syscall === "EPERM" && !filterDeniesSyscall(f, a) && !f.noNewPrivs;
  // QEMU's file capability is asked of its SELinux contexts too (capability { sys_ptrace }).
  const capRefused = (f.domains ?? []).some((d) => d.scope === "qemu" && d.ptraceRefused);
  const syscall = qemu?.ptrace && onlySysctl && !capRefused ? "ok" : a.syscall;
  const device = libvirtHidesDevice(f) ? { "device-node": "ENOENT", device: "ENOENT" } : {};
  return refusedIn({ ...a, syscall, ...device }, f, "qemu");
}

/** UFFDIO_* names of the ioctls in `names` whose bits are not set in `mask`. */
export const missingIoctls = (mask: bigint, names: string[]) =>
  names.filter((n) => !(mask & (1n << BigInt(K._UFFDIO[n])))).map((n) => `UFFDIO_${n}`);
/** UFFD_FEATURE_* names of the features in `wanted` that `offered` lacks. */
export const missingFeatures = (offered: bigint, wanted: bigint) =>
  Object.entries(K.UFFD_FEATURE)
    .filter(([, b]) => wanted & b && !(offered & b))
    .map(([n]) => `UFFD_FEATURE_${n}`);
export const featureMask = (...names: string[]) => names.reduce((m, n) => m | K.UFFD_FEATURE[n], 0n);

export const [MISSING, WP] = [K.UFFDIO_REGISTER_MODE_MISSING, K.UFFDIO_REGISTER_MODE_WP];
/** One registration test: the seed's sequence on one kind of memory, in one mode. */
export type Registration = T.Head & { kind: "anon" | "hugetlb" | "shmem"; mode: bigint };
export const REGISTRATIONS: Registration[] = [
  { id: "register-anon", title: "UFFDIO_REGISTER MISSING on anonymous memory", kind: "anon", mode: MISSING },
  { id: "register-hugetlb", title: "UFFDIO_REGISTER MISSING on hugetlbfs memory", kind: "hugetlb", mode: MISSING },
  { id: "register-shmem", title: "UFFDIO_REGISTER MISSING on shared memory (memfd)", kind: "shmem", mode: MISSING },
  { id: "write-protect", title: "UFFDIO_REGISTER WP (background-snapshot)", kind: "anon", mode: WP },
];
/** What a registration needs from the kernel: a feature bit, and the ioctls it must offer on the range. */
export function needs(spec: Registration) {
  if (spec.mode === WP) return { feature: K.UFFD_FEATURE.PAGEFAULT_FLAG_WP, ioctls: ["WRITEPROTECT"] };
  const feature = featureMask(...{ anon: [], hugetlb: ["MISSING_HUGETLBFS"], shmem: ["MISSING_SHMEM"] }[spec.kind]);
  // No ZEROPAGE on hugetlb: QEMU places zero huge pages with COPY.
  return { feature, ioctls: spec.kind === "hugetlb" ? ["WAKE", "COPY"] : ["WAKE", "COPY", "ZEROPAGE"] };
}

/** A capability: whose it is, the checks it needs passed, the faults it needs served, the features it needs. */
export type Need = { consumer: "qemu" | T.ConsumerName; checks: string[]; trips: string[]; features?: string[] };
/** What postcopy needs on any memory: QEMU's sequence on anonymous memory, and both faults served. */
const RAM = {
  checks: ["page-size", "uffd-api", "uffd-features", "register-anon"],
  trips: ["user-read", "kernel-write"],
};
export const NEEDS = {
  "postcopy-ram": { consumer: "qemu", ...RAM },
  "postcopy-hugetlbfs": { consumer: "qemu", ...RAM, checks: [...RAM.checks, "register-hugetlb"] },
  "postcopy-shmem": { consumer: "qemu", ...RAM, checks: [...RAM.checks, "register-shmem"] },
  "background-snapshot": { consumer: "qemu", checks: ["uffd-api", "write-protect"], trips: ["write-protect"] },
  "postcopy-blocktime": { consumer: "qemu", ...RAM, features: ["THREAD_ID"] },
  // Postcopy beside multifd (parallel migration): what postcopy-ram needs, from a QEMU that can (judge()).
  "postcopy-multifd": { consumer: "qemu", ...RAM },
  "criu-lazy-pages": { consumer: "criu", checks: ["criu-events"], trips: [] },
  "firecracker-uffd": { consumer: "firecracker", checks: ["register-anon"], trips: [], features: ["EVENT_REMOVE"] },
  // Cloud Hypervisor's on-demand restore (v52) and postcopy (v53): guest RAM that KVM faults on, registered MISSING
  // (WAKE and COPY), with UFFD_FEATURE_MISSING_SHMEM asked for any zone not on huge pages.
  "cloud-hypervisor": {
    consumer: "cloud-hypervisor",
    ...RAM,
    checks: ["uffd-api", "register-anon"],
    features: ["MISSING_SHMEM"],
  },
} satisfies Record<T.Capability, Need>;
export const CAPABILITIES = Object.keys(NEEDS) as T.Capability[];

// ── QEMU's registration, and real faults served ──

/** A uffdio_api struct asking for `features`. */
export const apiStruct = (features: bigint) => new BigUint64Array([K.UFFD_API, features, 0n]);
/** Kinds of memory QEMU registers, as mmap() flags. */
const ANON = K.MAP_PRIVATE | K.MAP_ANONYMOUS;
export const MEMORY = { anon: ANON, hugetlb: ANON | K.MAP_HUGETLB | K.MAP_NORESERVE, shmem: K.MAP_SHARED };
/** Memory to register: its kind and length, the mode, and the features the uffd asks for. */
type Range = { kind: keyof typeof MEMORY; len: number; mode: bigint; features: bigint };
type Use<T> = (fd: number, area: number, reg: BigUint64Array, release: () => void) => T | Promise<T>;

/**
 * QEMU's postcopy_ram_supported_by_host() up to its registration, generalised over the kind of memory: a new uffd on
 * `route`, UFFDIO_API, the memory mapped (a memfd behind shmem), UFFDIO_REGISTER; then `use`. Owns the uffd, the
 * memfd and the mapping, released in its `finally` (the seed's `goto out`); `use` may close the uffd first with
 * `release`, which frees a thread stuck in a fault nobody served. Returns use's answer, or the failed call as
 * `UFFDIO_REGISTER: EINVAL`.
 */
export async function registered<T>(sys: Sys, facts: Device, route: Route, m: Range, use: Use<T>): Promise<T | string> {
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

/** How long any wait for a fault may take, and the slice between looks at the faulting thread. */
export const BOUND_MS = 1000;
const SLICE_MS = 5;
const EAGAIN = K.errnoOf("EAGAIN");

/**
 * Starts a native thread on freshly registered memory and serves its faults, each wait bounded by boundMs: poll a
 * slice at a time, looking at the thread between slices, so a thread that returns without faulting (EFAULT under
 * user-mode-only) is seen at once. Owns the thread: its cleanup closes the uffd before the join, which frees a thread
 * stuck in a fault nobody served.
 */
export function serveFaults<T>(
  sys: Sys,
  facts: Device,
  route: Route,
  boundMs: number,
  f: Faulting<T>,
  tick?: Progress,
) {
  const features = f.mode === K.UFFDIO_REGISTER_MODE_WP ? K.UFFD_FEATURE.PAGEFAULT_FLAG_WP : 0n;
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
