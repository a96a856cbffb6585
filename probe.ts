#!/bin/sh
/*/true 2>/dev/null; case $0 in /*) p=$0 ;; *) p=$PWD/$0 ;; esac; export BUN_RUNTIME_TRANSPILER_CACHE_PATH=0
exec bun --config=/dev/null --no-env-file --cwd=/ "$p" "$@" # */
// Run as a program, sh runs the lines above (no process but true before Bun): Bun then reads nothing of the working
// directory (no bunfig.toml, .env, package.json or tsconfig.json: --cwd=/ and the script's own path, which Bun
// resolves through links), and writes no transpiler cache.
/**
 * postcopy-probe: can QEMU do userfaultfd-based postcopy live migration on this host, in this context — and if
 * not, why, and what to run. It runs QEMU's own postcopy_ram_supported_by_host() sequence (and what QEMU 8.0+
 * adds) against the real kernel, through ffi.ts, and answers for the QEMU that will run: the installed one's
 * version decides which way to a uffd counts.
 *
 * ```sh
 * ./probe.ts            # report; exit 0 supported, 1 not, 2 could not answer
 * ./probe.ts --json     # the postcopy-probe/1 JSON document
 * ```
 *
 * The file reads in the order the data flows, one banner per stage (types.ts declares each stage's record):
 *   Facts          read-only host context                             readFacts() -> Facts
 *   Routes         which consumer takes which way to a uffd           shared.ts CONSUMERS
 *   Checks         QEMU's sequence, one row per check                 CHECKS, runChecks() -> Check[], Learnt
 *   Round trips    real faults served, bytes verified                 TRIPS
 *   Capabilities   each consumer, judged on its route                 NEEDS, judge() -> Judged
 *   Report         the pipeline, then one renderer                    probe() -> Report, renderHuman()
 *   Command line   options as data, main() and the exit status       OPTIONS, parseArgs(), main()
 * Every default run loads this file, ffi.ts (the kernel ABI) and shared.ts (what the option files use too). The
 * diagnosis (diagnosis.ts: one table of causes, their gates, evidence and fixes) loads where a capability failed, and
 * each option's own code is a file loaded (require) only where it applies: README, "What runs".
 */
import type { Sys } from "./ffi.ts";
import * as K from "./ffi.ts";
import * as S from "./shared.ts";
import type * as T from "./types.ts";

const { errnoName } = K;

// ── Facts: read-only host context ──

/**
 * Reads the facts the checks and the diagnosis need; `device` is /dev/userfaultfd as QEMU sees it (--pid: resolved
 * inside its root), or the errno its resolution gave; `theirs`, what is the process's own (--pid).
 */
export function readFacts(
  sys: Sys,
  device: string | number = S.DEVICE,
  theirs: T.ProcessFacts = {},
  context: string | null = null,
): T.Facts {
  const meminfo = sys.readText("/proc/meminfo");
  // The default huge page size; with /proc mounted subset=pid (systemd's ProcSubset=pid), the smallest sysfs lists.
  const hugeKb = S.whole(S.field(meminfo, "Hugepagesize")?.replace(/ kB$/, "")) ?? (meminfo ? null : hugeSizes()[0]);
  const status = sys.readText("/proc/self/status");
  const uid = process.getuid!();
  const uidMap = S.uidMapOf(sys.readText("/proc/self/uid_map"));
  const node = typeof device === "string" ? sys.stat(device) : null;
  const found = node?.ret === 0 ? node : null;
  const misc = sys.readText("/proc/misc")?.match(/^\s*(\d+) userfaultfd$/m)?.[1];
  const minor = S.whole(misc ?? sys.readText("/sys/class/misc/userfaultfd/dev")?.match(/^10:(\d+)$/m)?.[1]);
  const enforce = sys.readText("/sys/fs/selinux/enforce")?.trim();
  // Only the userfaultfd device itself is ever opened: anything else there (a FIFO, a file, another device) is not,
  // and answers ENODEV. A stat() SELinux refuses is not an open() it refuses (selinux.ts).
  const unstatted = node?.errno === K.errnoOf("EACCES") && enforce !== undefined;
  const isDevice =
    (!!found && (found.mode & K.S_IFMT) === K.S_IFCHR && found.rdev.join(":") === `10:${minor}`) ||
    (unstatted && loadSelinux().onDevtmpfs(sys, device as string));
  const version = sys.readText("/proc/version") ?? "";
  const [passwd, groups] = [S.rows(sys, "/etc/passwd"), S.rows(sys, "/etc/group")];
  const libvirt = libvirtConf(sys.readText("/etc/libvirt/qemu.conf"));
  const nameOf = (table: string[][], id: number) => table.find((r) => r[2] === String(id))?.[0] ?? String(id);
  const f: T.Facts = {
    kernel:
      sys.readText("/proc/sys/kernel/osrelease")?.trim() ?? (require("node:os") as typeof import("node:os")).release(),
    device: isDevice ? (device as string) : null,
    deviceSays: isDevice ? 0 : node === null ? (device as number) : node.ret < 0 ? node.errno : K.errnoOf("ENODEV"),
    arch: K.arch!.name,
    pageSize: sys.pageSize(),
    hugePageSize: hugeKb === null ? null : hugeKb * 1024,
    uid,
    user: nameOf(passwd, uid),
    unprivilegedUserfaultfd: S.whole(sys.readText("/proc/sys/vm/unprivileged_userfaultfd")),
    capSysPtrace: S.capBit(S.field(status, "CapEff"), S.CAP_SYS_PTRACE),
    noNewPrivs: S.whole(S.field(status, "NoNewPrivs")) === 1,
    seccomp: S.whole(S.field(status, "Seccomp")),
    seccompFilters: S.whole(S.field(status, "Seccomp_filters")),
    uidMap,
    userNamespace: uidMap === null ? null : uidMap !== S.INITIAL_UID_MAP,
    devnode: found && {
      ...{ mode: modeString(found.mode), kind: what(found), uid: found.uid, gid: found.gid },
      ...{ owner: nameOf(passwd, found.uid), group: nameOf(groups, found.gid) },
    },
    miscMinor: minor,
    selinux: enforce === "1" ? "enforcing" : enforce === "0" ? "permissive" : null,
    // gVisor's Sentry: "-gvisor" in the release, or the fixed 2016 build date of its /proc/version.
    gvisor: /gvisor/i.test(version) || version.includes("Sun Jan 10 15:06:54 PST 2016"),
    libvirt,
    qemuUser: libvirt?.user ?? ["qemu", "libvirt-qemu"].find((u) => passwd.some((r) => r[0] === u)) ?? null,
    kvmGroup: groups.some((g) => g[0] === "kvm"),
    ...theirs,
  };
  // Where SELinux is enabled: the contexts this run answers for, judged by the loaded policy (selinux.ts).
  if (context !== null && enforce === undefined)
    throw new S.UsageError("--context needs SELinux, which is not enabled here");
  return enforce === undefined || f.domains ? f : { ...f, domains: loadSelinux().hostDomains(sys, f, context) };
}
/** The huge page sizes /sys/kernel/mm/hugepages lists, in kB, smallest first (none without hugetlbfs). */
function hugeSizes() {
  try {
    const names = (require("node:fs") as typeof import("node:fs")).readdirSync("/sys/kernel/mm/hugepages");
    return names
      .map((n) => Number(n.match(/^hugepages-(\d+)kB$/)?.[1]))
      .filter((kb) => kb > 0)
      .sort((x, y) => x - y);
  } catch {
    return [];
  }
}
/** `crw-------` for a character device with mode 0600. */
const modeString = (mode: number) =>
  S.typeOf(mode)[0] + [..."rwxrwxrwx"].map((c, i) => (mode & (0o400 >> i) ? c : "-")).join("");
/** What a file is, as a person says it: `a FIFO`, `c 1:3`. */
const what = (node: { mode: number; rdev: number[] }) =>
  (node.mode & K.S_IFMT) === K.S_IFCHR ? `c ${node.rdev.join(":")}` : S.typeOf(node.mode)[1];
/** libvirt's qemu.conf: the user it runs QEMU as, and its device ACL when set. */
function libvirtConf(text: string | null) {
  if (text === null) return null;
  const user = text.match(/^\s*user\s*=\s*"([^"]*)"/m)?.[1] ?? null;
  const acl = text.match(/^\s*cgroup_device_acl\s*=\s*\[([^\]]*)\]/m)?.[1];
  return { user, deviceAcl: acl === undefined ? null : [...acl.matchAll(/"([^"]*)"/g)].map((m) => m[1]) };
}

// ── Checks: QEMU's sequence, one row per check; what they learn ──

/** What every check reads, and what it may add to what was learnt. */
type Probe = { sys: Sys; facts: T.Facts; opts: T.Options; learnt: T.Learnt };
/** Errors that are limits of the probe's own process, not answers about the host. */
const LIMITS = ["EMFILE", "ENFILE", "ENOMEM", "EAGAIN"];
const limited = (detail: string) => LIMITS.some((e) => detail.endsWith(`: ${e}`));
const OWN_LIMIT = "(a limit of the probe's own process, not an answer about the host)";
const result = (head: T.Head, status: T.Status, detail: string, more: Partial<T.Check> = {}): T.Check => ({
  ...{ id: head.id, title: head.title, status, detail },
  ...more,
});
/** A check a limit of the probe's own process kept from running: skipped, and remembered as such. */
function ownLimit(p: Probe, head: T.Head, detail: string, more: Partial<T.Check> = {}) {
  p.learnt.limited.push(head.id);
  return result(head, "skip", `could not run: ${detail} ${OWN_LIMIT}`, more);
}
/** A failed call as a check result; a limit of the probe's own is a check it could not run. */
function failed(p: Probe, head: T.Head, detail: string) {
  if (limited(detail)) return ownLimit(p, head, detail);
  return result(head, "fail", detail, { errno: detail.split(": ").at(-1) });
}
/** The failed check when the kernel lacks features of `wanted` (QEMU's "Missing userfault features"), or null. */
function lacking(head: T.Head, offered: bigint, wanted: bigint) {
  const missing = S.missingFeatures(offered, wanted);
  return missing.length ? result(head, "fail", `kernel does not offer ${missing.join(", ")}`, { missing }) : null;
}

function checkPageSize(p: Probe, head: T.Head): T.Check {
  const [host, target] = [p.facts.pageSize, p.opts.targetPageSize];
  // QEMU: "Target page size bigger than host page size"
  return result(head, target > host ? "fail" : "pass", `host ${host}, target ${target}`);
}

function checkOpen(p: Probe, head: T.Head): T.Check {
  // --pid: the process's AppArmor profile mediates the kernel's answers, and a seccomp filter of its answers before
  // the kernel does (SIGSYS: it kills or traps).
  const kernel = S.refusedIn({ ...S.routeAnswers(p.sys, p.facts), ...p.facts.apparmor?.denied }, p.facts, "all");
  const a = { ...kernel, ...p.facts.filter?.answers };
  // The checks below use a kernel-mode uffd when there is one (the kernel answers the same on any route).
  const route = S.ROUTES.find((r) => a[r] === "ok") ?? null;
  Object.assign(p.learnt, { answers: a, route });
  const heard = `${S.DEVICE}: ${a.device}, userfaultfd(2): ${a.syscall}, user-mode-only: ${a["user-mode-only"]}`;
  if (Object.values(a).some((e) => LIMITS.includes(e))) return ownLimit(p, head, heard, { routes: a });
  if (route === null || route === "user-mode-only") return result(head, "fail", heard, { routes: a, errno: a.syscall });
  return result(head, "pass", `${heard}; checks use ${route}`, { routes: a });
}

/** The QEMU that will run, read only when it matters: its version splits the routes, or its file capability counts. */
function checkQemuRoute(p: Probe, head: T.Head): T.Check {
  const { facts, learnt } = p;
  const a = learnt.answers!;
  const seenByQemu = S.qemuAnswers(a, facts, null);
  const split = S.answerOf("qemu<8.0", seenByQemu) !== S.answerOf("qemu>=8.0", seenByQemu);
  // Its version decides, too, what QEMU makes of something else at the device's path (ENODEV).
  const impostor = a["device-node"] === "ENODEV";
  if (split || impostor || p.opts.qemu !== null || p.opts.migrate || a.syscall === "EPERM")
    learnt.qemu ??= loadQemu().identify(p.sys, facts, p.opts);
  const q = learnt.qemu;
  const consumer = S.qemuConsumer(q);
  const answer = S.answerOf(consumer, S.qemuAnswers(a, facts, q));
  const route = S.CONSUMERS[consumer](a).at(-1)!;
  learnt.qemuRoute = { route, byFileCap: answer === "ok" && a[route] !== "ok" };
  const via = learnt.qemuRoute.byFileCap ? " (by its cap_sys_ptrace file capability)" : "";
  if (split && !q?.version) {
    const why = `${q?.error ?? "no QEMU found"}; ${S.DEVICE}: ${a.device}, userfaultfd(2): ${a.syscall}`;
    return result(head, "warn", `${why}: yes for QEMU 8.0 and later, no before 8.0`);
  }
  const who = q?.version ? `QEMU ${q.version} (${q.path})` : "QEMU";
  return result(head, answer === "ok" ? "pass" : "fail", `${who} uses ${route}: ${answer}${via}`);
}

/** UFFDIO_API asking for `features` on a throw-away uffd: the reply, or the failed check. */
function handshake(p: Probe, head: T.Head, features: bigint, call = "UFFDIO_API"): BigUint64Array | T.Check {
  const absent = lacking(head, p.learnt.features ?? features, features);
  if (absent) return absent;
  const fd = S.openRoute(p.sys, p.facts, p.learnt.route!);
  if (fd.ret < 0) return failed(p, head, S.said("userfaultfd", fd));
  try {
    const api = S.apiStruct(features);
    const r = p.sys.ioctl(fd.ret, K.UFFDIO_API, api);
    return r.ret < 0 ? failed(p, head, S.said(call, r)) : api;
  } finally {
    p.sys.close(fd.ret);
  }
}
/**
 * The check passed, or failed when the `ioctls` mask lacks any of `names`: QEMU's "Missing userfault features"
 * (ufd_check_and_apply() requires REGISTER and UNREGISTER), or "Missing userfault map features".
 */
function offering(head: T.Head, ioctls: bigint, detail: string, names = ["REGISTER", "UNREGISTER"], what = "features") {
  const missing = S.missingIoctls(ioctls, names);
  if (!missing.length) return result(head, "pass", detail);
  return result(head, "fail", `${detail}; Missing userfault ${what}: ${missing.join(", ")}`, { missing });
}

function checkApi(p: Probe, head: T.Head): T.Check {
  // QEMU's receive_ufd_features(): ask for nothing to learn what is offered.
  // A failure here is QEMU's "Userfault feature detection failed".
  const api = handshake(p, head, 0n);
  if (!(api instanceof BigUint64Array)) return api;
  p.learnt.features = api[1];
  const on = p.learnt.route === "user-mode-only" ? " on a user-mode-only uffd, the only one here" : "";
  return offering(head, api[2], `features 0x${api[1].toString(16)}, ioctls 0x${api[2].toString(16)}${on}`);
}

function checkFeatures(p: Probe, head: T.Head): T.Check {
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
function checkCriu(p: Probe, head: T.Head): T.Check {
  const api = handshake(p, head, S.featureMask(...CRIU_EVENTS), `UFFDIO_API with ${CRIU_EVENTS.join("|")}`);
  // EPERM: EVENT_FORK needs CAP_SYS_PTRACE (5.5+), the kernel's answer for this context (criu-needs-ptrace).
  return api instanceof BigUint64Array ? result(head, "pass", `${CRIU_EVENTS.join(", ")} granted`) : api;
}

/** One registration: register, unregister, and the ioctls the range offers ("Missing userfault map features"). */
async function register(p: Probe, spec: S.Registration): Promise<T.Check> {
  const { feature, ioctls } = S.needs(spec);
  const absent = lacking(spec, p.learnt.features!, feature);
  if (absent) return absent;
  const len = spec.kind === "hugetlb" ? p.facts.hugePageSize : p.facts.pageSize;
  if (!len) return result(spec, "fail", "no huge page size in /proc/meminfo or sysfs: a kernel without hugetlbfs");
  const range = { ...spec, len, features: feature };
  const checked = await S.registered(p.sys, p.facts, p.learnt.route!, range, (fd, _, reg) => {
    const r = p.sys.ioctl(fd, K.UFFDIO_UNREGISTER, reg.subarray(0, 2));
    if (r.ret < 0) return S.said("UFFDIO_UNREGISTER", r);
    return offering(spec, reg[3], `${len} B page, ioctls 0x${reg[3].toString(16)}`, ioctls, "map features");
  });
  return typeof checked === "string" ? failed(p, spec, checked) : checked;
}

function checkRunAs(p: Probe, head: T.Head): T.Check {
  const { uid, user, qemuUser } = p.facts;
  const kept = uid !== 0 && p.facts.capSysPtrace ? ", keeping QEMU's CAP_SYS_PTRACE" : "";
  const asked = p.opts.user ? `, as --${p.opts.pid ? "pid" : "user"} asked${kept}` : "";
  if (p.opts.user || uid !== 0 || !qemuUser) return result(head, "pass", `probing as ${user} (uid ${uid})${asked}`);
  const hint = `postcopy-probe --user ${S.sh(qemuUser)}`;
  return result(head, "warn", `root's answer may not be QEMU's: QEMU runs as ${qemuUser} here; run ${hint}`, { hint });
}

/** What a check needs learnt first, and why it is skipped without it. */
const UNMET = {
  answers: "uffd-open could not run",
  route: "no userfaultfd could be opened, not even user-mode-only",
  features: "UFFDIO_API did not answer",
};
/** One row of the check list: its head, what it needs learnt first, and how it runs. */
type Row = T.Head & { after: keyof typeof UNMET | null; run: (p: Probe, head: T.Head) => T.Check | Promise<T.Check> };
/** The checks, in report order. */
const CHECKS: Row[] = [
  { id: "page-size", title: "host page size >= target page size", after: null, run: checkPageSize },
  { id: "uffd-open", title: "a userfaultfd (/dev/userfaultfd, then the syscall)", after: null, run: checkOpen },
  {
    id: "qemu-route",
    title: "the way the QEMU that will run opens its userfaultfd",
    after: "answers",
    run: checkQemuRoute,
  },
  { id: "uffd-api", title: "UFFDIO_API handshake and REGISTER/UNREGISTER", after: "route", run: checkApi },
  {
    id: "uffd-features",
    title: "userfault features as QEMU applies them (THREAD_ID)",
    after: "features",
    run: checkFeatures,
  },
  ...S.REGISTRATIONS.map((spec): Row => ({ ...spec, after: "features", run: (p) => register(p, spec) })),
  { id: "criu-events", title: "non-cooperative events (CRIU lazy pages)", after: "features", run: checkCriu },
  {
    id: "round-trip",
    title: "real faults served with UFFDIO_COPY, bytes verified",
    after: "route",
    run: checkRoundTrip,
  },
  { id: "run-as", title: "the user QEMU runs as", after: null, run: checkRunAs },
];

/** Runs the checks in order, skipping one whose prerequisite is missing: the checks and what they learnt. */
export async function runChecks(sys: Sys, facts: T.Facts, opts: T.Options, context?: T.Context) {
  const learnt: T.Learnt = {
    ...{ answers: null, route: null, features: null, qemu: context?.qemu ?? null },
    ...{ qemuRoute: null, trips: {}, limited: [] },
  };
  const p: Probe = { sys, facts, opts, learnt };
  const checks: T.Check[] = [];
  for (const { id, title, after, run } of CHECKS) {
    const unmet = after !== null && learnt[after] === null;
    checks.push(unmet ? result({ id, title }, "skip", UNMET[after!]) : await run(p, { id, title }));
  }
  // The SELinux contexts judged (selinux.ts); --pid: the running process's own context and its VM's configuration.
  const selinux = facts.domains ? [loadSelinux().domainsCheck(facts, learnt.answers, learnt.qemu)] : [];
  return { checks: [...checks, ...selinux, ...(context?.checks ?? [])], learnt };
}

/** Every kernel feature bit by name; bits the probe does not know go under `unknown` in hex. */
export function decodeFeatures(mask: bigint | null): Record<string, boolean | string> {
  if (mask === null) return {};
  const known = Object.values(K.UFFD_FEATURE).reduce((m, b) => m | b, 0n);
  const named = Object.fromEntries(Object.entries(K.UFFD_FEATURE).map(([n, b]) => [n, (mask & b) !== 0n]));
  return { ...named, unknown: `0x${(mask & ~known).toString(16)}` };
}

// ── Round trips: real faults served, bytes verified ──

/** A round trip: a libc function on a native thread faults on a fresh page, the probe serves it. */
type Trip = { key: string; name: string; fn: string; mode: bigint; resolve: bigint; flags: bigint };
/** Where the copied pattern's NUL sits: strlen's answer proves the bytes arrived. */
export const PATTERN_NUL = 1234;
const [COPY, WRITEPROTECT] = [K.UFFDIO_COPY, K.UFFDIO_WRITEPROTECT];
const [READ, WRITE] = [0n, K.UFFD_PAGEFAULT_FLAG_WRITE];
const WP_WRITE = K.UFFD_PAGEFAULT_FLAG_WP | WRITE;
const TRIPS: Trip[] = [
  { key: "user-read", name: "user-mode read", fn: "strlen", mode: S.MISSING, resolve: COPY, flags: READ },
  // The kernel's copy_to_user, as KVM and vhost touch guest RAM; a user-mode-only uffd gets no event.
  { key: "kernel-write", name: "kernel-mode write", fn: "uname", mode: S.MISSING, resolve: COPY, flags: WRITE },
  // The only real test of background-snapshot: a write to a write-protected page, served by clearing the protection.
  { key: "write-protect", name: "write-protect", fn: "time", mode: S.WP, resolve: WRITEPROTECT, flags: WP_WRITE },
];
/** null when the thread's return value and the page's bytes prove the fault was served. */
function verify(t: Trip, ret: number, page: Uint8Array) {
  if (t.fn === "strlen") return ret === PATTERN_NUL ? null : `strlen returned ${ret}, not ${PATTERN_NUL}`;
  if (t.fn === "uname") return ret === 0 && K.latin1(page.subarray(0, 5)) === "Linux" ? null : `uname returned ${ret}`;
  // time() stores its answer in the page: the 32 low bits must match what it returned.
  const stored = Number(BigInt.asIntN(32, new BigInt64Array(page.buffer, page.byteOffset, 1)[0]));
  return ret !== -1 && stored === ret ? null : `time returned ${ret}, the page holds ${stored}`;
}

/** One round trip: a thread faults on one fresh page, the fault is served, the bytes are checked. */
async function roundTrip(p: Probe, t: Trip): Promise<T.TripResult> {
  const len = p.facts.pageSize;
  const start = Bun.nanoseconds();
  // The kernel copies from `src` during UFFDIO_COPY: `serve` below holds it until then.
  const src = new Uint8Array(len).fill(0x50);
  src[PATTERN_NUL] = 0;
  let page = 0n;
  const served = await S.serveFaults(p.sys, p.facts, p.learnt.route!, p.opts.boundMs, {
    ...{ kind: "anon", len, mode: t.mode, fn: t.fn, count: 1 },
    prepare(fd, area) {
      page = BigInt(area);
      if (t.mode !== S.WP) return null;
      K.memory(area, len)[0] = 1; // write-protect guards present pages only
      const r = p.sys.ioctl(fd, WRITEPROTECT, new BigUint64Array([page, BigInt(len), K.UFFDIO_WRITEPROTECT_MODE_WP]));
      return r.ret < 0 ? S.said("UFFDIO_WRITEPROTECT", r) : null;
    },
    serve(fd, msg) {
      const [flags, address] = [msg[1], msg[2]];
      if (flags !== t.flags || address !== page) return `unexpected fault: flags ${flags} at 0x${address.toString(16)}`;
      // uffdio_copy from `src`; or uffdio_writeprotect with mode 0: clear WP and wake.
      const args = t.resolve === COPY ? [page, BigInt(K.addressOf(src)), BigInt(len), 0n, 0n] : [page, BigInt(len), 0n];
      const r = p.sys.ioctl(fd, t.resolve, new BigUint64Array(args));
      return r.ret < 0 ? S.said("resolve", r) : null;
    },
    finish: (ret, area) => verify(t, ret, K.memory(area, len)) ?? Bun.nanoseconds() - start,
  });
  if (typeof served === "string") return { ok: false, ns: Bun.nanoseconds() - start, detail: `${t.name}: ${served}` };
  return { ok: true, ns: served, detail: `${t.name} ${Math.round(served / 1000)} µs` };
}

async function checkRoundTrip(p: Probe, head: T.Head): Promise<T.Check> {
  const { route, features, trips } = p.learnt;
  const wp = features !== null && (features & K.UFFD_FEATURE.PAGEFAULT_FLAG_WP) !== 0n;
  for (const t of TRIPS.filter((t) => wp || t.mode !== S.WP)) trips[t.key] = await roundTrip(p, t);
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

/** Each way a capability goes unjudged, and what would settle it. */
const UNJUDGED: Record<string, T.Unjudged> = {
  limit: [OWN_LIMIT, "run it again with more of what ran out (ulimit -n, free memory, fewer threads)"],
  byFileCap: ["QEMU opens its uffd by a file capability this run lacks", AS_QEMU],
  impostor: [
    `${S.DEVICE} is not the userfaultfd device, or was not looked at: what QEMU 8.0+ makes of it decides`,
    "ask QEMU with --qemu",
  ],
  unversioned: [
    "no QEMU version was read: postcopy beside multifd works from QEMU 10.1 on",
    "ask QEMU with --qemu, or migrate with --migrate --parallel 4",
  ],
};

/**
 * What each consumer can do here, judged from the checks and what they learnt: yes or no for each capability, why for
 * each one the run could not judge, and postcopy-ram for QEMU before and after 8.0.
 */
export function judge(checks: T.Check[], learnt: T.Learnt, f: T.Facts, context?: T.Context): T.Judged {
  const { answers: a, trips, features, qemu } = learnt;
  const statusOf = (id: string) => checks.find((c) => c.id === id)?.status;
  const has = (name: string) => features !== null && (features & K.UFFD_FEATURE[name]) !== 0n;
  const kernelMode = learnt.route !== "user-mode-only";
  /** One capability, QEMU's for the generation `qemuAs`: yes, no, or why the run could not judge it. */
  const one = (cap: T.Capability, qemuAs: T.ConsumerName): boolean | T.Unjudged => {
    const need: S.Need = S.NEEDS[cap];
    const forQemu = need.consumer === "qemu";
    const consumer = forQemu ? qemuAs : (need.consumer as T.ConsumerName);
    if (!a) return false;
    const seen = forQemu ? S.qemuAnswers(a, f, qemu) : a;
    const answer = S.answerOf(consumer, seen);
    const opens = answer === "ok";
    // This VM's memory may need more of the host than anonymous RAM (--pid: its hugetlbfs or shared backends).
    const needed = [...need.checks, ...(cap === "postcopy-ram" ? (context?.requires ?? []) : [])];
    // A kernel-mode fault is proven only on a kernel-mode uffd: QEMU's own may be one (a file capability) when ours
    // is not.
    const served = (k: string) => trips[k]?.ok || (k === "kernel-write" && !kernelMode && opens);
    const theirs = context?.judging?.map((j) => j(forQemu, S.CONSUMERS[consumer](seen), cap)).find((x) => x !== null);
    // What the run knows refuses it is a no, whatever else it could not judge (a limit of its own hides no answer).
    const refused =
      (!opens && !LIMITS.includes(answer)) ||
      needed.some((id) => statusOf(id) === "fail") ||
      need.trips.some((k) => trips[k] && !served(k) && !limited(trips[k].detail)) ||
      theirs === false;
    if (refused) return false;
    // Else it is a yes, unless something it needs could not be judged: the first reason that holds.
    if (LIMITS.includes(answer) || ["round-trip", ...needed].some((id) => learnt.limited.includes(id)))
      return UNJUDGED.limit;
    if (opens && !S.ROUTES.some((r) => a[r] === "ok")) return UNJUDGED.byFileCap;
    if (opens && consumer === "qemu>=8.0" && a["device-node"] === "ENODEV") return UNJUDGED.impostor;
    if (theirs) return theirs;
    const passed = (id: string) => ["pass", "warn"].includes(statusOf(id) ?? "");
    return needed.every(passed) && need.trips.every(served) && (need.features ?? []).every(has);
  };
  /** Every capability, QEMU's judged for `qemuAs`: the deciding QEMU's generation, or one generation's. */
  const all = (qemuAs: T.ConsumerName) => {
    const judged = S.CAPABILITIES.map((cap) => [cap, one(cap, qemuAs)] as const);
    const ok = Object.fromEntries(judged.map(([cap, v]) => [cap, v === true])) as Record<T.Capability, boolean>;
    const unknown: T.Judged["unknown"] = Object.fromEntries(judged.filter(([, v]) => Array.isArray(v)));
    // Postcopy beside multifd is postcopy-ram from a QEMU that can: its version says (qemu.ts, loaded when read).
    const multifd = qemu?.version ? loadQemu().multifdWith(qemu.version) : null;
    if (ok["postcopy-multifd"] && multifd !== true) ok["postcopy-multifd"] = false;
    if (unknown["postcopy-ram"] || (ok["postcopy-ram"] && multifd === null))
      unknown["postcopy-multifd"] = unknown["postcopy-ram"] ?? UNJUDGED.unversioned;
    return { ok, unknown, ram: unknown["postcopy-ram"] ? null : ok["postcopy-ram"] };
  };
  const { ok, unknown, ram } = all(S.qemuConsumer(qemu));
  const generations = { "qemu<8.0": all("qemu<8.0").ram, "qemu>=8.0": all("qemu>=8.0").ram };
  return { ok, unknown, ram, undetermined: Object.keys(unknown) as T.Capability[], generations };
}

// ── Report: the pipeline, then one renderer ──

/** The pipeline, without printing: checks, capabilities judged, the diagnosis, and the postcopy-probe/1 document. */
export async function probe(sys: Sys, facts: T.Facts, opts: T.Options, context?: T.Context): Promise<T.Report> {
  const { checks, learnt } = await runChecks(sys, facts, opts, context);
  const judged = judge(checks, learnt, facts, context);
  const failing = S.CAPABILITIES.filter((c) => !judged.ok[c] && !judged.unknown[c]);
  // Why, and what to run, where a capability failed (diagnosis.ts is loaded then): where the sysctl is set, when the
  // syscall said EPERM; the causes only a QEMU's version can be, when one was read (qemu.ts), and a context's.
  const D = failing.length && learnt.answers ? loadDiagnosis() : null;
  const f = { ...facts, sysctlSource: D && learnt.answers?.syscall === "EPERM" ? D.sysctlSource(sys) : null };
  const seen = { f, a: learnt.answers!, checks, failing, qemu: learnt.qemu, required: opts.require };
  const more = {
    ...(learnt.qemu?.version ? loadQemu().CAUSES : {}),
    ...(facts.domains ? loadSelinux().CAUSES : {}),
    ...context?.causes,
  };
  // Why the run could not answer what was asked, each with what would settle it: the exit status is then 2.
  const why = [
    ...S.unanswered(opts.require, judged.unknown),
    ...(facts.domains ? loadSelinux().unanswered(facts.domains) : []),
    ...(context?.unanswered ?? []),
  ];
  const trip = learnt.trips["kernel-write"];
  const report: T.Report = {
    schema: S.SCHEMA,
    version: S.VERSION,
    postcopy: why.length ? null : judged.ok["postcopy-ram"],
    probe: {
      postcopy: judged.ram,
      qemu: learnt.qemu?.version ? `QEMU ${learnt.qemu.version}` : "QEMU",
      consumer: S.qemuConsumer(learnt.qemu),
      route: learnt.qemuRoute?.route ?? null,
      ...judged.generations,
    },
    host: f,
    checks,
    features: decodeFeatures(learnt.features),
    capabilities: judged.ok,
    undetermined: judged.undetermined,
    diagnosis: D ? D.diagnose(seen, more) : [],
    required: { capabilities: opts.require, ok: why.length ? null : opts.require.every((c) => judged.ok[c]) },
    roundTrip: trip && { ok: Boolean(learnt.trips["user-read"]?.ok && trip.ok), ns: trip.ns },
    ...(context?.shown ? { context: context.shown } : {}),
    ...(why.length ? { error: `could not answer what was asked: ${why.map(([w]) => w).join("; ")}` } : {}),
    ...(why.length ? { settle: why.map(([, settle]) => settle) } : {}),
  };
  // --qemu and --migrate: real judges beside the probe's own, whose answer decides unless the probe's no stands.
  const migration = opts.migrate ? await loadMigrate().migrationAnswer(sys, opts, learnt.qemu, context) : null;
  const asked = opts.qemu !== null || migration;
  return asked ? loadQemu().judgedAlso(report, { opts, learnt, judged, context, migration }) : report;
}

const COLORS: Record<T.Status, number> = { pass: 32, warn: 33, fail: 31, skip: 90 };
const paint = (on: boolean, code: number, text: string) => (on ? `\x1b[${code}m${text}\x1b[0m` : text);
const WIDTH = 72;

/** The verdict as a sentence: whose answer, for which QEMU, yes or no, for whom. */
function verdict(report: T.Report, yesNo: (yes: boolean, text: string) => string) {
  const { host, probe: own, answeredBy, postcopy } = report;
  const word = (yes: boolean | null) => yesNo(yes === true, yes ? "SUPPORTED" : "NOT SUPPORTED");
  const whose = answeredBy ?? `${own.qemu} postcopy-ram`;
  const line = (answer: string) => `Postcopy live migration (${whose}): ${answer} for ${host.user} (uid ${host.uid})`;
  // Could not answer: never a yes or a no beside it, but why, and what would settle it.
  if (report.error) {
    const why = report.error.replace(/^could not answer what was asked: /, "");
    return [`${line("UNKNOWN")}: ${why}`, ...(report.settle ?? []).map((s) => `  To settle it: ${s}`)];
  }
  // Without a real judge's answer, QEMU before and after 8.0 may differ: both are said, in one line if no version is
  // known.
  const [before, after] = [own["qemu<8.0"], own["qemu>=8.0"]];
  const split = !answeredBy && before !== null && after !== null && before !== after;
  const unversioned = split && own.qemu === "QEMU";
  const unjudged = !answeredBy && report.undetermined.includes("postcopy-ram");
  const both = `${word(after)} for QEMU 8.0 and later, ${word(before)} before 8.0 (no QEMU version known),`;
  const answer = unversioned ? both : unjudged ? "UNKNOWN" : word(postcopy);
  const [other, theirs] = own.consumer === "qemu<8.0" ? ["8.0 and later", after] : ["before 8.0", before];
  return split && !unversioned ? [line(answer), `  QEMU ${other} would be ${word(theirs)} here`] : [line(answer)];
}

/** The human report, in the style of virt-host-validate: every string in it shown(). */
export function renderHuman(raw: T.Report, opts: Pick<T.Options, "quiet" | "color">): string {
  const report: T.Report = JSON.parse(JSON.stringify(raw), (_, v) => (typeof v === "string" ? S.shown(v) : v));
  const { host, checks } = report;
  const yesNo = (yes: boolean, text: string) => paint(opts.color, yes ? COLORS.pass : COLORS.fail, text);
  const count = (s: T.Status) => `${s}=${checks.filter((c) => c.status === s).length}`;
  const out: string[] = [];
  if (!opts.quiet)
    out.push(`postcopy-probe ${report.version}: Linux ${host.kernel} ${host.arch}, ${host.user} (uid ${host.uid})`);
  for (const c of checks.filter((c) => !opts.quiet || c.status === "warn" || c.status === "fail")) {
    const status = paint(opts.color, COLORS[c.status], c.status.toUpperCase());
    out.push(`${`Checking for ${c.title}`.padEnd(WIDTH)}: ${status}${c.detail ? ` (${c.detail})` : ""}`);
  }
  if (!opts.quiet) out.push("", "Capabilities:");
  for (const [name, yes] of opts.quiet ? [] : Object.entries(report.capabilities)) {
    const unknown = report.undetermined.includes(name as T.Capability);
    out.push(`  ${name.padEnd(22)}${unknown ? "unknown" : yesNo(yes, yes ? "yes" : "no")}`);
  }
  if (report.bench) out.push("", loadBench().benchLine(report.bench));
  if (!opts.quiet) out.push("", S.STATUSES.map(count).join(", "));
  if (report.diagnosis.length) out.push("", "Why / Fix:");
  for (const d of report.diagnosis) {
    const blocks = d.blocks.length ? ` [blocks ${d.blocks.join(", ")}]` : " [a note: it blocks nothing]";
    out.push(`  ${d.cause}: ${d.summary}${blocks}`, ...d.evidence.map((e) => `    because ${e}`));
    out.push(...d.fix.map((f) => `    $ ${f}`));
  }
  out.push(...verdict(report, yesNo));
  const own = report.probe.postcopy;
  if (report.answeredBy && report.postcopy !== null && own !== null && own !== report.postcopy) {
    const probeSays = `The probe's own answer: ${own ? "SUPPORTED" : "NOT SUPPORTED"}`;
    out.push(yesNo(false, `${probeSays}; ${report.answeredBy} disagrees, and decides`));
  }
  const { capabilities: wanted, ok } = report.required;
  const required = ok === null ? "UNKNOWN" : yesNo(ok, ok ? "YES" : "NO");
  if (wanted.join() !== "postcopy-ram") out.push(`Required ${wanted.join(", ")}: ${required}`);
  return `${out.join("\n")}\n`;
}

/**
 * The report as the postcopy-probe/1 JSON document. Beyond JSON's own escapes, what a terminal may act on (DEL, C1
 * controls, format and line-separator characters) is escaped too: the document shown on a terminal shows a target's
 * bytes escaped, and a program that decodes it gets the same strings.
 */
export const renderJson = (report: T.Report) =>
  `${JSON.stringify(report, null, 2).replace(/[\u007f-\u009f\p{Cf}\p{Zl}\p{Zp}]/gu, unicodeEscapes)}\n`;
const unicodeEscapes = (c: string) =>
  c
    .split("")
    .map((u) => `\\u${u.charCodeAt(0).toString(16).padStart(4, "0")}`)
    .join("");

const RENDERERS: Record<T.Format, (report: T.Report, opts: T.Options) => string> = {
  human: (report, opts) =>
    report.vms ? loadAll().renderVms(report, verdict(report, (_, t) => t).join("\n")) : renderHuman(report, opts),
  json: renderJson,
  prometheus: (report) => loadTextfile().renderPrometheus(report),
};

/** The document of a run that could not answer: JSON and Prometheus readers still get one; a human gets stderr. */
export function errorDocument(format: T.Format, error: string, notQemu = false) {
  const partial = { schema: S.SCHEMA, version: S.VERSION, error, ...(notQemu ? { notQemu } : {}) } as T.Report;
  return format === "human" ? "" : RENDERERS[format](partial, {} as T.Options);
}

// ── Command line: options as data, main() and the exit status ──

const BENCH_FAULTS = 10000;
/** At most 2 GiB of 4 KiB pages in one --bench. */
const BENCH_MAX = 500000;

/** `value` if it is one of `valid`, else a UsageError naming the valid ones. */
function oneOf<V extends string>(value: string, valid: readonly V[], what: string): V {
  if (!valid.includes(value as V))
    throw new S.UsageError(`Unknown ${what} ${S.quoted(value)}: use ${valid.join(", ")}`);
  return value as V;
}
/** A whole number `ok` accepts, exact for any input (BigInt: no 32-bit wrap), else a UsageError saying why. */
function number(value: string, what: string, must: string, ok: (n: bigint) => boolean) {
  const n = /^[0-9]{1,20}$/.test(value) ? BigInt(value) : -1n;
  if (n < 0n || !ok(n)) throw new S.UsageError(`Invalid ${what} ${S.quoted(value)}: ${must}`);
  return Number(n);
}
const isPageSize = (n: bigint) => n > 0n && n <= 1n << 30n && !(n & (n - 1n));
const FORMATS = Object.keys(RENDERERS) as T.Format[];
/** Each option value's parser: it throws a UsageError saying what is wrong. */
const formatOf = (v: string) => oneOf(v, FORMATS, "format");
const capabilitiesOf = (v: string) => [...new Set(v.split(",").map((c) => oneOf(c, S.CAPABILITIES, "capability")))];
const pidOf = (v: string) => number(v, "pid", "a process id", (n) => n > 0n && n < 1n << 22n);
const channelsOf = (v: string) => number(v, "channel count", "from 1 to 64", (n) => n >= 1n && n <= 64n);
const pageSizeOf = (v: string) => number(v, "target page size", "a power of two in bytes, such as 4096", isPageSize);
const isFaultCount = (n: bigint) => n >= 2n && n <= BENCH_MAX;
const faultsOf = (v: string) =>
  v ? number(v, "fault count", `a whole number from 2 to ${BENCH_MAX}`, isFaultCount) : BENCH_FAULTS;
const qemuOf = (v: string) => v || true;

type Parsed = T.Options & { help: boolean; version: boolean };
/**
 * One option: its names, the field it sets (its long name in camelCase, unless `key` says another), and with what: a
 * flag sets `flag` (true when none is given); an option with a value (in brackets when optional) sets what `parse`
 * makes of it, else the text itself.
 */
type Option = { names: string; key?: keyof Parsed; value?: string; parse?: (v: string) => unknown; flag?: string };
const keyOf = (o: Option) =>
  o.key ??
  o.names
    .split("--")
    .at(-1)!
    .replace(/-(\w)/g, (_, c: string) => c.toUpperCase());
/** The command line, as data: each option with its help. */
const OPTIONS: Array<Option & { help: string }> = [
  { names: "--json", key: "format", flag: "json", help: "print the postcopy-probe/1 JSON document, nothing else" },
  { names: "--format", value: "FORMAT", parse: formatOf, help: "human (default), json, or prometheus" },
  { names: "--output", value: "FILE", help: "write the report to FILE whole (a temporary file, renamed)" },
  { names: "--require", value: "CAP[,CAP...]", parse: capabilitiesOf, help: "exit status for these capabilities" },
  { names: "-q, --quiet", help: "print only warnings, failures, why and the verdict" },
  { names: "--user", value: "NAME|UID", help: "answer for that user (as root): QEMU's user" },
  { names: "--pid", value: "PID", parse: pidOf, help: "answer for that running QEMU and its VM (as root)" },
  { names: "--context", value: "CONTEXT", help: "answer for that SELinux context (system_u:system_r:svirt_t:s0)" },
  { names: "--all", help: "also answer for every QEMU running here, each as --pid does (as root)" },
  { names: "--qemu", value: "[PATH]", parse: qemuOf, help: "ask the installed QEMU (or PATH) over QMP too" },
  { names: "--migrate", help: "also migrate a 256 MiB VM between two QEMUs here (30 s at most)" },
  { names: "--parallel", value: "N", parse: channelsOf, help: "--migrate with N multifd channels: postcopy-multifd" },
  { names: "--target-page-size", value: "N", parse: pageSizeOf, help: "the guest's page size (default 4096)" },
  {
    names: "--bench",
    value: "[N]",
    parse: faultsOf,
    help: `also serve N faults (default ${BENCH_FAULTS}) at full speed`,
  },
  { names: "-h, --help", help: "this text" },
  { names: "-V, --version", help: "the version" },
];
const usageOf = (o: Option) => `[${o.names.split(", ").at(-1)}${o.value ? ` ${o.value}` : ""}]`;
const USAGE = `Usage: postcopy-probe ${OPTIONS.map(usageOf).join(" ")}`;
const HELP = `${USAGE}

Tells whether QEMU can do userfaultfd postcopy live migration on this host, in this context.

${OPTIONS.map((o) => `  ${`${o.names} ${o.value ?? ""}`.padEnd(24)}${o.help}`).join("\n")}

Exit status: 0 postcopy supported, 1 not supported, 2 the probe could not answer what was asked.`;

/** Parses argv (without the runtime and script). Throws UsageError for anything it does not know. */
export function parseArgs(argv: string[], env: Record<string, string | undefined> = process.env, tty = false): Parsed {
  const opts: Parsed = {
    ...{ format: "human", require: ["postcopy-ram"], quiet: false, color: tty && !env.NO_COLOR && env.TERM !== "dumb" },
    ...{ targetPageSize: 4096, boundMs: 1000, bench: 0, user: null, pid: null, qemu: null, qemuMs: 5000 },
    ...{ migrate: false, migrateMiB: 256, migrateMs: 30_000, parallel: 0, output: null, help: false, version: false },
    ...{ context: null, all: false },
  };
  for (let i = 0; i < argv.length; i++) {
    const [name, inline] = argv[i].startsWith("--") ? argv[i].split(/=(.*)/s) : [argv[i], undefined];
    const option = OPTIONS.find((o) => o.names.split(", ").includes(name));
    if (!option) throw new S.UsageError(`Unknown option ${S.quoted(argv[i])}`);
    const value = option.value ?? "";
    if (!value && inline !== undefined) throw new S.UsageError(`Option "${name}" takes no value: ${S.quoted(argv[i])}`);
    // An optional value is the next argument only when that is not an option itself.
    const optional = value.startsWith("[");
    const next = value && inline === undefined && !(optional && argv[i + 1]?.startsWith("-")) ? argv[++i] : undefined;
    if (value && !optional && (inline ?? next) === undefined) throw new S.UsageError(`Option "${name}" needs a value`);
    const text = inline ?? next ?? "";
    Object.assign(opts, { [keyOf(option)]: !value ? (option.flag ?? true) : option.parse ? option.parse(text) : text });
  }
  // --parallel migrates with multifd: that migration answers postcopy-multifd, which the exit status is then for.
  if (opts.parallel && !argv.some((a) => a.startsWith("--require"))) opts.require = ["postcopy-multifd"];
  if (opts.output === "") throw new S.UsageError(`Option "--output" needs a file name, not ""`);
  const alone = ["pid", "user", "context", "qemu", "migrate"] as const;
  const beside = alone.filter((o) => (o === "migrate" ? opts.migrate || opts.parallel > 0 : opts[o] !== null));
  if (opts.all && beside.length)
    throw new S.UsageError(`--all answers each QEMU in its own context: not with --${beside[0]}`);
  if (opts.pid !== null && opts.context !== null)
    throw new S.UsageError("--context cannot answer for --pid: the process's own SELinux context is what counts");
  if (opts.pid !== null && opts.qemu !== null)
    throw new S.UsageError(
      "--qemu cannot answer for --pid: a process's QEMU is never run to ask it; use --pid with --migrate",
    );
  // A relative path is from where the probe was started; a QEMU named without a path is looked up on $PATH.
  const here = (path: string) => (path.startsWith("/") ? path : `${S.workingDirectory(env)}/${path}`);
  const named = typeof opts.qemu === "string" && !opts.qemu.includes("/");
  const qemu = named ? (Bun.which(opts.qemu as string, { PATH: S.absolutePath(env) }) ?? opts.qemu) : opts.qemu;
  return {
    ...opts,
    output: opts.output && here(opts.output),
    qemu: typeof qemu === "string" ? here(qemu) : qemu,
    migrate: opts.migrate || opts.parallel > 0,
  };
}

/** The format asked for, read leniently: an error document must match it even when the command line is wrong. */
function formatAsked(argv: string[]): T.Format {
  const at = argv.findLastIndex((a) => a.startsWith("--json") || a.startsWith("--format"));
  const arg = argv[at] ?? "";
  const value = arg.startsWith("--json") ? "json" : arg.includes("=") ? arg.split("=")[1] : argv[at + 1];
  return FORMATS.includes(value as T.Format) ? (value as T.Format) : "human";
}

/** Writes the whole document to stdout, or to `output` whole (textfile.ts); throws when it cannot. */
function emit(sys: Sys | null, text: string, output: string | null) {
  if (!text) return;
  if (output) return loadTextfile().writeWhole(output, text);
  if (!sys) return console.log(text.trimEnd());
  if (S.stdoutClosed(sys)) throw new Error("Cannot write the report: stdout is closed");
  const bytes = new TextEncoder().encode(text);
  for (let at = 0, tries = 0; at < bytes.length; ) {
    const r = sys.write(1, bytes.subarray(at));
    if (r.ret > 0) at += r.ret;
    else if (["EINTR", "EAGAIN"].includes(errnoName(r.errno)) && tries++ < 1000) Bun.sleepSync(1);
    else throw new Error(`Cannot write the report to stdout: ${errnoName(r.errno)}`);
  }
}

/** Each option's own file, loaded on first use only: a run that does not need it does not pay for it. */
const loadQemu = () => require("./qemu.ts") as typeof import("./qemu.ts");
const loadDiagnosis = () => require("./diagnosis.ts") as typeof import("./diagnosis.ts");
const loadContext = () => require("./context.ts") as typeof import("./context.ts");
const loadBench = () => require("./bench.ts") as typeof import("./bench.ts");
const loadTextfile = () => require("./textfile.ts") as typeof import("./textfile.ts");
const loadMigrate = () => require("./migrate.ts") as typeof import("./migrate.ts");
const loadSelinux = () => require("./selinux.ts") as typeof import("./selinux.ts");
const loadAll = () => require("./all.ts") as typeof import("./all.ts");

/** The CLI: parse, facts, checks, capabilities, diagnosis, render, exit status; --bench after the probe. */
export async function main(argv = process.argv.slice(2)) {
  // Nothing is looked up where the probe was started (a tenant's directory, for root): from here on it works in /,
  // and a relative path it was given is from there (PWD, which its children get).
  process.env.PWD = S.workingDirectory();
  process.chdir("/");
  // --migrate starts each QEMU through the probe itself, which then becomes that QEMU (migrate.ts).
  if (process.env.POSTCOPY_PROBE_LAUNCH) return loadMigrate().launch(argv);
  let [sys, asked]: [Sys | null, T.Options | null] = [null, null];
  try {
    const opts = parseArgs(argv, process.env);
    asked = opts;
    if (process.platform !== "linux")
      throw new Error(`Not Linux: userfaultfd is a Linux interface (this is "${process.platform}")`);
    sys = K.loadSys();
    if (opts.help || opts.version) return emit(sys, `${opts.help ? HELP : S.VERSION}\n`, null);
    // --user and --pid: the whole probe again in a child that takes on QEMU's context (context.ts). The parent
    // writes the child's document (to --output too: it is never the child's to write) and takes its status.
    const context = opts.user !== null || opts.pid !== null ? await loadContext().takeOn(sys, opts, argv) : undefined;
    if (context && "out" in context) {
      emit(sys, context.out, opts.output);
      process.exitCode = context.code;
      return;
    }
    opts.color = !process.env.NO_COLOR && process.env.TERM !== "dumb" && sys.isatty(1) === 1 && !opts.output;
    const facts = readFacts(sys, context?.device, context?.facts, opts.context);
    const report = await probe(sys, facts, opts, context);
    if (opts.bench) report.bench = await loadBench().bench(sys, facts, report, opts);
    if (opts.all) report.vms = await loadAll().everyVm(sys, opts);
    emit(sys, RENDERERS[opts.format](report, opts), opts.output);
    if (report.error) console.error(`postcopy-probe: ${S.shown(report.error)}`);
    process.exitCode = opts.all ? loadAll().exitStatus(report) : report.error ? 2 : report.required.ok ? 0 : 1;
  } catch (e) {
    const usage = (e as Error).name === "UsageError" || e instanceof S.UsageError;
    console.error(`postcopy-probe: ${S.shown((e as Error).message)}${usage ? `\n${USAGE}` : ""}`);
    try {
      const doc = errorDocument(formatAsked(argv), (e as Error).message, e instanceof S.NotQemu);
      emit(sys, doc, asked?.output ?? null);
    } catch {
      // the message above already says why
    }
    process.exitCode = 2;
  }
}

if (import.meta.main) main();
