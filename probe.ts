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
import { existsSync, readFileSync, statSync } from "node:fs";
import { release } from "node:os";
import {
  arch, errnoName, loadSys, type R, type Sys, MAP_ANONYMOUS, MAP_HUGETLB, MAP_NORESERVE, MAP_PRIVATE,
  MAP_SHARED, MFD_CLOEXEC, O_CLOEXEC, O_NONBLOCK, O_RDWR, PROT_READ, PROT_WRITE, UFFD_API, UFFD_FEATURE,
  UFFD_USER_MODE_ONLY, UFFDIO_API, UFFDIO_BITS, UFFDIO_REGISTER, UFFDIO_REGISTER_MODE_MISSING,
  UFFDIO_REGISTER_MODE_WP, UFFDIO_UNREGISTER, USERFAULTFD_IOC_NEW,
} from "./ffi.ts";

export const VERSION = "0.1.0";
export const SCHEMA = "postcopy-probe/1";
const USAGE = "Usage: postcopy-probe [--json | --format human|json] [-q] [--target-page-size N] [--help] [--version]";
const HELP = `${USAGE}

Tells whether QEMU can do userfaultfd postcopy live migration on this host, in this context.

  --json                  print the postcopy-probe/1 JSON document, nothing else
  --format FORMAT         human (default) or json
  -q, --quiet             print only what did not pass, and the verdict
  --target-page-size N    the guest's target page size in bytes (default 4096)
  -h, --help              this text
  -V, --version           the version

Exit status: 0 postcopy supported, 1 not supported, 2 the probe could not run.`;

export type Status = "pass" | "warn" | "fail" | "skip";
/** One line of the report. A check never prints and never throws for a kernel answer. */
export type Check = { id: string; title: string; status: Status; detail: string; errno?: string; hint?: string; [more: string]: unknown };
export type Options = { format: "human" | "json"; quiet: boolean; targetPageSize: number; color: boolean };

/** Read-only host context. Every field is read from the host; nothing is inferred from versions. */
export type Facts = {
  kernel: string;
  arch: string;
  pageSize: number;
  hugePageSize: number | null;
  nrHugepages: number | null;
  uid: number;
  user: string;
};

const DEVICE = "/dev/userfaultfd";
const readText = (path: string) => {
  try {
    return readFileSync(path, "utf8");
  } catch {
    return null;
  }
};
const readNumber = (path: string) => {
  const text = readText(path);
  return text === null ? null : Number(text.trim());
};
/** The value after `key:` in a /proc file such as /proc/meminfo. */
const field = (text: string | null, key: string) => text?.match(new RegExp(`^${key}:\\s*(.*)$`, "m"))?.[1] ?? null;

/** The user name for a uid from /etc/passwd, or the number as text. */
function userName(uid: number) {
  const line = readText("/etc/passwd")?.split("\n").find((l) => l.split(":")[2] === String(uid));
  return line?.split(":")[0] ?? String(uid);
}

/** Reads the facts the checks and the diagnosis need. */
export function readFacts(sys: Sys): Facts {
  const hugeKb = field(readText("/proc/meminfo"), "Hugepagesize");
  const uid = process.getuid!();
  return {
    kernel: release(),
    arch: arch!.name,
    pageSize: sys.pageSize(),
    hugePageSize: hugeKb === null ? null : Number.parseInt(hugeKb) * 1024,
    nrHugepages: readNumber("/proc/sys/vm/nr_hugepages"),
    uid,
    user: userName(uid),
  };
}

/** How this context gets a uffd, as QEMU 8.0+ does: the device first, then the syscall. */
type Route = "device" | "syscall" | "user-mode-only";
/** What the checks share: the Sys, the facts, and what earlier checks learnt. */
export type Probe = { sys: Sys; facts: Facts; opts: Options; route: Route | null; features: bigint | null };

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

/** A uffdio_api struct asking for `features`. */
const apiStruct = (features: bigint) => new BigUint64Array([UFFD_API, features, 0n]);
const bit = (n: number) => 1n << BigInt(n);
/** Names of the ioctls in `names` whose bits are not set in `mask`. */
const missingIoctls = (mask: bigint, names: string[]) => names.filter((n) => !(mask & bit(UFFDIO_BITS[n])));
/** Names of the features in `wanted` that `offered` lacks, as UFFD_FEATURE_* names. */
const missingFeatures = (offered: bigint, wanted: bigint) =>
  Object.entries(UFFD_FEATURE).filter(([, b]) => wanted & b && !(offered & b)).map(([n]) => `UFFD_FEATURE_${n}`);
const featureMask = (...names: string[]) => names.reduce((m, n) => m | UFFD_FEATURE[n], 0n);

type Head = Pick<Check, "id" | "title">;
const result = (head: Head, status: Status, detail: string, more: Partial<Check> = {}): Check => ({ ...head, status, detail, ...more });
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
  if (p.route === "device" && routes.syscall !== "ok")
    return result(head, "warn", `${said}; QEMU older than 8.0 only uses the syscall and will fail`, { routes, route: p.route });
  if (p.route) return result(head, "pass", said, { routes, route: p.route });
  return result(head, "fail", said, { routes, errno: routes.syscall });
}

function checkApi(p: Probe, head: Head): Check {
  const { sys } = p;
  const fd = openUffd(p);
  if (fd.ret < 0) return failed(head, "userfaultfd", fd);
  try {
    // QEMU's receive_ufd_features(): ask for nothing on a throw-away fd to learn what is offered.
    const api = apiStruct(0n);
    const r = sys.ioctl(fd.ret, UFFDIO_API, api);
    if (r.ret < 0) return failed(head, "UFFDIO_API", r); // QEMU: "Userfault feature detection failed"
    p.features = api[1];
    const missing = missingIoctls(api[2], ["REGISTER", "UNREGISTER"]);
    const detail = `features 0x${api[1].toString(16)}, ioctls 0x${api[2].toString(16)}`;
    if (missing.length) return result(head, "fail", `${detail}; missing UFFDIO_${missing.join(", UFFDIO_")}`);
    return result(head, "pass", detail);
  } finally {
    sys.close(fd.ret);
  }
}

function checkFeatures(p: Probe, head: Head): Check {
  const { sys } = p;
  // QEMU's ufd_check_and_apply(): THREAD_ID when offered, for postcopy-blocktime.
  const asked = p.features! & UFFD_FEATURE.THREAD_ID;
  const fd = openUffd(p);
  if (fd.ret < 0) return failed(head, "userfaultfd", fd);
  try {
    const api = apiStruct(asked);
    const r = sys.ioctl(fd.ret, UFFDIO_API, api);
    if (r.ret < 0) return failed(head, "UFFDIO_API", r);
    const missing = missingIoctls(api[2], ["REGISTER", "UNREGISTER"]);
    if (missing.length) return result(head, "fail", `Missing userfault features: UFFDIO_${missing.join(", UFFDIO_")}`);
    if (!asked) return result(head, "warn", "UFFD_FEATURE_THREAD_ID not offered (Linux 4.14+): no postcopy-blocktime");
    return result(head, "pass", "UFFD_FEATURE_THREAD_ID applied");
  } finally {
    sys.close(fd.ret);
  }
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
    id: "register-anon", title: "UFFDIO_REGISTER MISSING on anonymous memory", kind: "anon",
    flags: MAP_PRIVATE | MAP_ANONYMOUS, mode: UFFDIO_REGISTER_MODE_MISSING, features: 0n, ioctls: ["WAKE", "COPY", "ZEROPAGE"],
  },
  {
    // No ZEROPAGE on hugetlb: QEMU places zero huge pages with COPY.
    id: "register-hugetlb", title: "UFFDIO_REGISTER MISSING on hugetlbfs memory", kind: "hugetlb",
    flags: MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB | MAP_NORESERVE, mode: UFFDIO_REGISTER_MODE_MISSING,
    features: UFFD_FEATURE.MISSING_HUGETLBFS, ioctls: ["WAKE", "COPY"],
  },
  {
    id: "register-shmem", title: "UFFDIO_REGISTER MISSING on shared memory (memfd)", kind: "shmem",
    flags: MAP_SHARED, mode: UFFDIO_REGISTER_MODE_MISSING, features: UFFD_FEATURE.MISSING_SHMEM, ioctls: ["WAKE", "COPY", "ZEROPAGE"],
  },
  {
    id: "write-protect", title: "UFFDIO_REGISTER WP (background-snapshot)", kind: "anon",
    flags: MAP_PRIVATE | MAP_ANONYMOUS, mode: UFFDIO_REGISTER_MODE_WP, features: UFFD_FEATURE.PAGEFAULT_FLAG_WP, ioctls: ["WRITEPROTECT"],
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
  if (absent.length) return result(head, "fail", `kernel does not offer ${absent.join(", ")}`);
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
    if (missing.length) return result(head, "fail", `${detail}; Missing userfault map features: UFFDIO_${missing.join(", UFFDIO_")}`);
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
  const absent = missingFeatures(p.features!, CRIU_EVENTS);
  if (absent.length) return result(head, "fail", `kernel does not offer ${absent.join(", ")}`);
  const fd = openUffd(p);
  if (fd.ret < 0) return failed(head, "userfaultfd", fd);
  try {
    const r = p.sys.ioctl(fd.ret, UFFDIO_API, apiStruct(CRIU_EVENTS));
    // EVENT_FORK needs CAP_SYS_PTRACE (5.5+): EPERM is the kernel's answer for this context.
    if (r.ret < 0) return failed(head, "UFFDIO_API with EVENT_FORK|EVENT_REMAP|EVENT_UNMAP|EVENT_REMOVE", r);
    return result(head, "pass", "EVENT_FORK, EVENT_REMAP, EVENT_UNMAP, EVENT_REMOVE granted");
  } finally {
    p.sys.close(fd.ret);
  }
}

/** The checks in report order; those after uffd-open need a uffd, most also the feature mask. */
type Step = Head & { needs: "route" | "features" | null; run: (p: Probe, head: Head) => Check };
const CHECKS: Step[] = [
  { id: "page-size", title: "host page size >= target page size", needs: null, run: checkPageSize },
  { id: "uffd-open", title: "a userfaultfd (/dev/userfaultfd, then the syscall)", needs: null, run: checkOpen },
  { id: "uffd-api", title: "UFFDIO_API handshake and REGISTER/UNREGISTER", needs: "route", run: checkApi },
  { id: "uffd-features", title: "userfault features as QEMU applies them (THREAD_ID)", needs: "features", run: checkFeatures },
  ...REGISTRATIONS.map((spec): Step => ({ ...spec, needs: "features", run: (p) => register(p, spec) })),
  { id: "criu-events", title: "non-cooperative events (CRIU lazy pages)", needs: "features", run: checkCriu },
];

/** Runs every check in order; a check whose prerequisite failed is skipped, saying which. */
export function runChecks(sys: Sys, facts: Facts, opts: Options): { checks: Check[]; probe: Probe } {
  const probe: Probe = { sys, facts, opts, route: null, features: null };
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
  "postcopy-ram", "postcopy-hugetlbfs", "postcopy-shmem", "background-snapshot",
  "postcopy-blocktime", "criu-lazy-pages", "firecracker-uffd",
] as const;
export type Capability = (typeof CAPABILITIES)[number];

/** What each consumer can do here: a pure function of the checks and the feature mask. */
export function capabilities(checks: Check[], features: bigint | null): Record<Capability, boolean> {
  const ok = (id: string) => ["pass", "warn"].includes(checks.find((c) => c.id === id)?.status ?? "skip");
  const has = (name: string) => features !== null && (features & UFFD_FEATURE[name]) !== 0n;
  const ram = ["page-size", "uffd-open", "uffd-api", "uffd-features", "register-anon"].every(ok);
  return {
    "postcopy-ram": ram,
    "postcopy-hugetlbfs": ram && ok("register-hugetlb"),
    "postcopy-shmem": ram && ok("register-shmem"),
    "background-snapshot": ok("uffd-open") && ok("uffd-api") && ok("write-protect"),
    "postcopy-blocktime": ram && has("THREAD_ID"),
    "criu-lazy-pages": ok("criu-events"),
    "firecracker-uffd": ok("uffd-open") && ok("register-anon") && has("EVENT_REMOVE"),
  };
}

export type Report = {
  schema: string;
  version: string;
  postcopy: boolean;
  host: Record<string, unknown>;
  checks: Check[];
  features: Record<string, boolean | string>;
  capabilities: Record<Capability, boolean>;
  diagnosis: Array<{ cause: string; evidence: string[]; fix: string[] }>;
};

/** The whole probe, without printing: the report the renderers turn into text. */
export function probe(sys: Sys, facts: Facts, opts: Options): Report {
  const { checks, probe: p } = runChecks(sys, facts, opts);
  const caps = capabilities(checks, p.features);
  return {
    schema: SCHEMA,
    version: VERSION,
    postcopy: caps["postcopy-ram"],
    host: { ...facts },
    checks,
    features: decodeFeatures(p.features),
    capabilities: caps,
    diagnosis: [],
  };
}

const COLORS: Record<Status, number> = { pass: 32, warn: 33, fail: 31, skip: 90 };
const paint = (on: boolean, code: number, text: string) => (on ? `\x1b[${code}m${text}\x1b[0m` : text);
const WIDTH = 72;

/** The human report, in the style of virt-host-validate. */
export function renderHuman(report: Report, opts: Pick<Options, "quiet" | "color">): string {
  const lines: string[] = [];
  const { host } = report;
  if (!opts.quiet) lines.push(`postcopy-probe ${report.version}: Linux ${host.kernel} ${host.arch}, ${host.user} (uid ${host.uid})`);
  for (const c of report.checks) {
    if (opts.quiet && c.status === "pass") continue;
    const label = `Checking for ${c.title}`.padEnd(WIDTH);
    const status = paint(opts.color, COLORS[c.status], c.status.toUpperCase());
    lines.push(`${label}: ${status}${c.detail ? ` (${c.detail})` : ""}`);
  }
  if (!opts.quiet) {
    lines.push("", "Capabilities:");
    for (const [name, yes] of Object.entries(report.capabilities))
      lines.push(`  ${name.padEnd(22)}${paint(opts.color, yes ? COLORS.pass : COLORS.fail, yes ? "yes" : "no")}`);
    const count = (s: Status) => report.checks.filter((c) => c.status === s).length;
    lines.push("", `pass=${count("pass")}, warn=${count("warn")}, fail=${count("fail")}, skip=${count("skip")}`);
  }
  const verdict = report.postcopy ? paint(opts.color, COLORS.pass, "SUPPORTED") : paint(opts.color, COLORS.fail, "NOT SUPPORTED");
  lines.push(`Postcopy live migration (QEMU postcopy-ram): ${verdict} for ${host.user} (uid ${host.uid})`);
  return `${lines.join("\n")}\n`;
}

export const renderJson = (report: Report) => `${JSON.stringify(report, null, 2)}\n`;

/** A wrong command line: exit 2 with the message and the usage line. */
export class UsageError extends Error {}

/** Parses argv (without the runtime and script). Throws UsageError for anything it does not know. */
export function parseArgs(argv: string[], env: Record<string, string | undefined> = process.env, tty = false) {
  const opts: Options & { help: boolean; version: boolean } = {
    format: "human", quiet: false, targetPageSize: 4096, color: tty && !env.NO_COLOR, help: false, version: false,
  };
  for (let i = 0; i < argv.length; i++) {
    const [flag, inline] = argv[i].startsWith("--") && argv[i].includes("=") ? argv[i].split(/=(.*)/s) : [argv[i], undefined];
    const value = () => {
      const v = inline ?? argv[++i];
      if (v === undefined) throw new UsageError(`Option "${flag}" needs a value`);
      return v;
    };
    if (flag === "--json") opts.format = "json";
    else if (flag === "-q" || flag === "--quiet") opts.quiet = true;
    else if (flag === "-h" || flag === "--help") opts.help = true;
    else if (flag === "-V" || flag === "--version") opts.version = true;
    else if (flag === "--format") {
      const v = value();
      if (v !== "human" && v !== "json") throw new UsageError(`Unknown format "${v}": use human or json`);
      opts.format = v;
    } else if (flag === "--target-page-size") {
      const v = value();
      opts.targetPageSize = Number(v);
      if (!/^[1-9][0-9]*$/.test(v) || opts.targetPageSize & (opts.targetPageSize - 1))
        throw new UsageError(`Invalid target page size "${v}": a power of two in bytes, such as 4096`);
    } else throw new UsageError(`Unknown option "${argv[i]}"`);
  }
  return opts;
}

/** The CLI: parse, facts, checks, capabilities, diagnosis, render, exit status. */
export function main(argv = process.argv.slice(2)) {
  let opts: ReturnType<typeof parseArgs>;
  try {
    opts = parseArgs(argv, process.env, Boolean(process.stdout.isTTY));
  } catch (e) {
    process.stderr.write(`postcopy-probe: ${(e as Error).message}\n${USAGE}\n`);
    process.exitCode = 2;
    return;
  }
  if (opts.help) return void process.stdout.write(`${HELP}\n`);
  if (opts.version) return void process.stdout.write(`${VERSION}\n`);
  let sys: Sys;
  try {
    if (process.platform !== "linux") throw new Error(`Not Linux: userfaultfd is a Linux interface (this is "${process.platform}")`);
    sys = loadSys();
  } catch (e) {
    process.stderr.write(`postcopy-probe: ${(e as Error).message}\n`);
    process.exitCode = 2;
    return;
  }
  const report = probe(sys, readFacts(sys), opts);
  process.stdout.write(opts.format === "json" ? renderJson(report) : renderHuman(report, opts));
  process.exitCode = report.postcopy ? 0 : 1;
}

if (import.meta.main) main();
