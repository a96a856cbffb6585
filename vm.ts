/**
 * This VM's configuration, read from a --pid process's command line: its memory backends and devices,
 * each judged as the QEMU that runs it judges them. context.ts loads this file only for --pid.
 *
 * ```ts
 * import { configChecks } from "./vm.ts";
 * const { checks, requires } = configChecks(view); // [vm-memory, vm-devices], the checks its RAM needs passed
 * ```
 */

import { atLeast } from "./shared.ts";
import type { Cause, Check } from "./types.ts";

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
/** A QEMU boolean that is true, in each spelling QEMU takes. */
const on = (v: unknown) => ["on", "true", "yes", "y", true].includes(v as string);

/** A mount as the process's table has it: its type and its options (hugetlbfs's pagesize among them). */
type Mount = { type: string; options?: string };
/** What the VM checks need to know of the process: its arguments, memory, how it sees its files, the host's pool. */
export type VmView = {
  /** Its arguments. */
  cmdline: string[];
  /** Its locked memory (VmLck), null when unread. */
  vmLckKb: number | null;
  /** Its huge pages in use (HugetlbPages, every size), null when unread. */
  hugetlbKb: number | null;
  /** Its cwd as it names it, null when unread. */
  cwd: string | null;
  /** Its mounts (mountinfo), null when unread. */
  mounts: Array<{ id: number; type: string }> | null;
  /** The files it holds open, by the path it knows them by, and the mount each is on (null: unknown). */
  files: () => Array<{ path: string | null; mount: () => Mount | null }>;
  /** The file system of a path walked inside the process's root, and its mount's options. */
  walk: (path: string) => { type: string | null; how: string; options?: string };
  /** The version of the QEMU it runs, when read: what QEMU says of a RAM block depends on it. */
  version?: string | null;
  /** The host's default huge page size (bytes), and its pool of each size; null when unread. */
  hugePages: {
    size: number | null;
    pool: (bytes: number) => { total: number; free: number; resv: number; file: string } | null;
  };
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
function memPathOn(path: string, f: VmView): { type: string | null; how: string; options?: string } {
  if (!path.startsWith("/") && f.cwd === null)
    return { type: null, how: "relative, and the process's cwd is unreadable" };
  if (f.mounts === null) return { type: null, how: "the process's mount table is unreadable" };
  const at = absolute(path, f.cwd ?? "/");
  const under = (p: string) => p === at || p.startsWith(at === "/" ? "/" : `${at}/`);
  const held = f
    .files()
    .find((file) => file.path !== null && under(file.path))
    ?.mount();
  return held ? { ...held, how: "the RAM file QEMU holds open" } : f.walk(at);
}
/** A size as QEMU reads one ("4G", "1.5T", "65536"), in bytes; a bare number is in `unit`s (-m: MiB). */
function sizeOf(value: unknown, unit = 1) {
  if (typeof value === "number") return value;
  const [, n, suffix] = String(value).match(/^(\d+(?:\.\d+)?)([bkmgtpe]?)$/i) ?? [];
  const scale = suffix ? 1024 ** "bkmgtpe".indexOf(suffix.toLowerCase()) : unit;
  return n === undefined ? null : Math.round(Number(n) * scale);
}
const MiB = 1 << 20;
const mib = (bytes: number) => (bytes >= 1 << 30 ? `${bytes / (1 << 30)} GiB` : `${bytes / MiB} MiB`);

/**
 * The VM's configuration, from its command line (`-x` and `--x` alike): memory backends (file-backed RAM
 * must be on tmpfs or hugetlbfs; shared memory needs MISSING_SHMEM, huge pages MISSING_HUGETLBFS) and
 * devices that block or endanger postcopy, each with QEMU's own message.
 */
export function configChecks(f: VmView) {
  // `--x` is `-x`, and -M is -machine.
  const args = f.cmdline.map((a) => (/^--[a-z]/.test(a) ? a.slice(1) : a)).map((a) => (a === "-M" ? "-machine" : a));
  const values = (opt: string, first: string) =>
    args.flatMap((a, i) => (args[i - 1] === opt ? [optionValue(a, first)] : []));
  const backends = values("-object", "qom-type").filter((o) => String(o["qom-type"]).startsWith("memory-backend"));
  // Each file-backed RAM and its size: a backend's size= (bytes), or -m's for -mem-path (MiB; QEMU's default 128).
  const machineRam = sizeOf(values("-m", "size").at(-1)?.size ?? "128", MiB);
  const rams = [
    ...backends.map((b) => ({ path: b["mem-path"], size: sizeOf(b.size) })),
    ...args.flatMap((a, i) => (args[i - 1] === "-mem-path" ? [{ path: a, size: machineRam }] : [])),
  ].filter((r): r is { path: string; size: number | null } => typeof r.path === "string" && r.path !== "");
  const memPaths = rams.map((r) => r.path);
  const memory: string[] = [];
  let status: Check["status"] = "pass";
  // The checks postcopy-ram needs passed for this VM's memory: huge pages, shared memory.
  const requires = new Set<"register-hugetlb" | "register-shmem">();
  // Bytes of hugetlbfs RAM by huge page size (a mount's pagesize=, else the host's default), and what is untold.
  const [huge, untold] = [new Map<number, number>(), [] as string[]];
  for (const { path, size } of rams) {
    const { type, how, options } = memPathOn(path, f);
    if (type === "hugetlbfs") {
      requires.add("register-hugetlb");
      const page = sizeOf(options?.match(/(?:^|,)pagesize=([^,]+)/)?.[1]) ?? f.hugePages.size;
      if (page === null || size === null) untold.push(`the ${page === null ? "huge page size" : "size"} of ${path}`);
      else huge.set(page, (huge.get(page) ?? 0) + size);
    } else if (type === "tmpfs") requires.add("register-shmem");
    else if (type === null) {
      if (status === "pass") status = "skip";
      memory.push(`could not tell what mem-path ${path} is on: ${how}`);
    } else {
      status = "fail";
      memory.push(`mem-path ${path} is on ${type} (by ${how}): ${NOT_TMPFS}`);
    }
  }
  // A memfd backend on huge pages (hugetlb=on, libvirt's memfd with hugepages) is hugetlbfs memory, shared.
  for (const b of backends.filter((b) => b["qom-type"] === "memory-backend-memfd" && on(b.hugetlb))) {
    requires.add("register-hugetlb");
    const [page, size] = [sizeOf(b.hugetlbsize) ?? f.hugePages.size, sizeOf(b.size)];
    if (page === null || size === null) untold.push(`the ${page === null ? "huge page size" : "size"} of ${b.id}`);
    else huge.set(page, (huge.get(page) ?? 0) + size);
  }
  // Shared memory: a memfd not on huge pages, or anonymous RAM shared (a file is what its mem-path is on, above).
  const memfd = (b: Props) => b["qom-type"] === "memory-backend-memfd" && !on(b.hugetlb);
  const sharedRam = (b: Props) => b["qom-type"] === "memory-backend-ram" && on(b.share);
  if (backends.some((b) => memfd(b) || sharedRam(b))) requires.add("register-shmem");
  const kind = requires.has("register-shmem") ? "shared memory (memfd or share=on)" : "anonymous RAM";
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
  // The RAM a copy of this VM would have (--migrate): a file where its first mem-path is, shared or not.
  const shared = requires.has("register-shmem") && !memPaths.length;
  const ram = {
    memPath: memPaths[0] ? absolute(memPaths[0], f.cwd ?? "/") : null,
    shared: shared || backends.some((b) => on(b.share)),
  };
  // QEMU's own seccomp sandbox (-sandbox on,...), rebuilt from the keys QEMU knows: a copy of this VM runs with it.
  const sandbox = values("-sandbox", "enable").findLast((o) => o.enable !== undefined);
  const kept = SANDBOX.filter((k) => /^(allow|deny|children)$/.test(String(sandbox?.[k])));
  const own =
    sandbox && on(sandbox.enable) ? ["-sandbox", ["on", ...kept.map((k) => `${k}=${sandbox[k]}`)].join(",")] : [];
  // QEMU reserves a hugetlbfs backend's pages when it maps them, unless told not to (reserve=off).
  const reserves = !backends.some((b) => b.reserve !== undefined && !on(b.reserve));
  const pool = hugePagesCheck(huge, untold, f, { incoming: args.includes("-incoming"), reserves });
  // The RAM files QEMU holds open by their own name (a mem-path that is a directory holds a file QEMU made itself).
  const held = new Set(f.files().map((file) => file.path));
  const named = (path: string) => held.has(absolute(path, f.cwd ?? "/"));
  const machine = { machines: values("-machine", "type"), objects: values("-object", "qom-type") };
  const late = ramBlockChecks(backends, args, { ...machine, named, version: f.version });
  return { checks: [mem, devices, ...late, ...(pool ? [pool] : [])], requires: [...requires], ram, sandbox: own };
}

/** At least `major`.`minor`, for a QEMU version read; null when none was. */
const since = (version: string | null | undefined, major: number, minor: number) =>
  version ? atLeast(version, major, minor) : null;
/**
 * What QEMU does to the VM's RAM blocks only once the migration runs, which its answer to postcopy-ram does not
 * tell: the destination discards each block when postcopy is advised, at the stream's start (a read-only file cannot
 * be discarded; a private file's holes are punched in the file itself), and a confidential guest's memory is
 * migrated by nothing. Each check only where it applies, with QEMU's own words for its version.
 */
function ramBlockChecks(
  backends: Props[],
  args: string[],
  o: { machines: Props[]; objects: Props[]; named: (path: string) => boolean; version?: string | null },
) {
  const { machines, objects, version } = o;
  const checks: Check[] = [];
  const files = backends.filter((b) => b["qom-type"] === "memory-backend-file");
  const readonly = files.filter((b) => on(b.readonly)).map((b) => String(b.id));
  if (readonly.length) {
    const says =
      since(version, 8, 2) === false
        ? `"ram_block_discard_range: Failed to fallocate ${readonly[0]}:0 +… (-9)" (QEMU before 8.2)`
        : '"ram_block_discard_range: Discarding RAM with readonly files is not supported" (QEMU 8.2+)';
    checks.push({
      ...{ id: "vm-readonly", title: "this VM's RAM files, as postcopy discards them", status: "fail" },
      detail: `read-only RAM files (${readonly.join(", ")}): ${ACCEPTS_THEN}: ${says}`,
      hint: "give the memory backend a writable file (readonly=off) before a postcopy migration",
    });
  }
  // A file of its own name mapped private (share=off, memory-backend-file's default, and -mem-path's): one other
  // processes may map too. A mem-path that is a directory gets a file QEMU makes and unlinks, no one else's.
  const memPath = args.findLast((_, i) => args[i - 1] === "-mem-path");
  const privateFiles = [
    ...files
      .filter((b) => !on(b.readonly) && !on(b.share) && typeof b["mem-path"] === "string" && o.named(b["mem-path"]))
      .map((b) => String(b.id)),
    ...(memPath && o.named(memPath) ? ["-mem-path"] : []),
  ];
  if (privateFiles.length)
    checks.push({
      ...{ id: "vm-private", title: "this VM's RAM files, as postcopy discards them", status: "warn" },
      detail:
        `RAM files mapped private (${privateFiles.join(", ")}): the migration completes (measured, QEMU 7.2 and 10), ` +
        `but the destination punches its holes in the file itself: ${PRIVATE_WORDS}`,
      hint: "share=on on the memory backend",
    });
  // A confidential guest (the machine's confidential-guest-support, or its older name memory-encryption): QEMU's
  // migration blockers, once the guest runs.
  const cgs = machines
    .flatMap((m) => [m["confidential-guest-support"], m["memory-encryption"]])
    .findLast((v) => typeof v === "string");
  const guest = cgs ? objects.find((x) => x.id === cgs) : undefined;
  const head = { id: "vm-confidential", title: "this VM's guest memory" };
  const restart = "a confidential guest does not migrate with QEMU: restart it on the destination";
  if (guest) {
    const type = String(guest["qom-type"]);
    const detail = `a confidential guest (${type}): ${CONFIDENTIAL[type] ?? CONFIDENTIAL.other}`;
    checks.push({ ...head, status: "fail", detail, hint: restart });
  } else if (cgs)
    checks.push({
      ...{
        ...head,
        status: "skip",
        hint: "read its command line: which object is it, and is it a confidential guest?",
      },
      detail: `confidential-guest-support=${cgs} names no -object the probe could read`,
    });
  return checks;
}
const ACCEPTS_THEN = "QEMU accepts postcopy-ram, then its destination fails when the migration starts";
const PRIVATE_WORDS =
  '"ram_block_discard_range: Discarding RAM in private file mappings is possibly dangerous, because it will modify ' +
  'the underlying file and will affect other users of the file" (QEMU 8.1+ warns; 7.2 does it unannounced)';
/** QEMU's migration blockers for confidential guests (target/i386/sev.c), added once the guest first runs. */
const CONFIDENTIAL: Record<string, string> = {
  "sev-guest": '"SEV: Migration is not implemented" (the source refuses to migrate it at all)',
  "sev-snp-guest": '"SEV-SNP: Migration is not implemented" (the source refuses to migrate it at all)',
  "tdx-guest":
    "its private memory is guest_memfd, which no userfaultfd can serve and QEMU does not migrate (QEMU 10.1+)",
  other: "its memory is out of any userfaultfd's reach, and QEMU does not migrate it",
};

/**
 * Huge pages for this VM's hugetlbfs memory. During postcopy the destination places each page as it is asked for,
 * from its pool: an incoming QEMU (-incoming) whose pool cannot hold its pages beside those other processes use fails
 * after precopy. A VM that runs here goes to another host's pool: what that pool must hold is said, not judged.
 */
function hugePagesCheck(
  huge: Map<number, number>,
  untold: string[],
  f: VmView,
  o: { incoming: boolean; reserves: boolean },
): Check | null {
  if (huge.size === 0 && untold.length === 0) return null;
  const { incoming } = o;
  // Its own pages in use, when all of one size: the rest in use is other processes'.
  const own = huge.size === 1 && f.hugetlbKb !== null ? f.hugetlbKb * 1024 : 0;
  const sizes = [...huge].map(([page, bytes]) => {
    const [pages, pool] = [Math.ceil(bytes / page), f.hugePages.pool(page)];
    // Other processes hold what is in use and not its own, and what is reserved and not its own (reserve=on: each
    // of its pages not yet in use). The per-node pools of a VM bound to NUMA nodes are not looked at.
    const ownUsed = Math.floor(own / page);
    const ownReserved = o.reserves ? Math.max(0, pages - ownUsed) : 0;
    const others = pool ? Math.max(0, pool.total - pool.free - ownUsed) + Math.max(0, pool.resv - ownReserved) : 0;
    const here = pool ? ` (this host's pool has ${pool.total}, ${others} in use or reserved by other processes)` : "";
    const said = `${mib(bytes)} in ${pages} pages of ${mib(page)}${here}`;
    return { page, pages, pool, needed: pages + others, said };
  });
  const short = incoming ? sizes.filter((s) => s.pool && s.pool.total < s.needed) : [];
  const unread = [...untold, ...sizes.filter((s) => !s.pool).map((s) => `this host's pool of ${mib(s.page)} pages`)];
  const role = incoming ? "" : "; the destination's pool must hold them beside what it uses";
  const said = sizes.length ? [`hugetlbfs: ${sizes.map((s) => s.said).join(", ")}${role}`] : [];
  const fix = short.map((s) => `echo ${s.needed} > ${s.pool!.file}`).join(" && ");
  return {
    id: "vm-hugepages",
    title: "huge pages for this VM's memory",
    status: short.length ? "fail" : incoming && unread.length ? "skip" : "pass",
    detail: [...said, ...unread.map((u) => `could not tell ${u}`)].join("; "),
    hint: fix
      ? `${fix}   # room for this VM's pages beside those in use; read it back: the kernel may grant fewer`
      : "read the pool yourself: /sys/kernel/mm/hugepages/hugepages-SIZEkB/{nr,free,resv}_hugepages",
  };
}

/** The keys of QEMU's -sandbox option, each allow, deny or (spawn) children. */
const SANDBOX = ["obsolete", "elevateprivileges", "spawn", "resourcecontrol"];
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

/** The causes this VM can be, as rows of diagnosis.ts's table (their README entries too). */
export const CAUSES = {
  "vm-config": {
    when: ({ checks }) => failing(checks, CONFIG).length > 0,
    blocks: "qemu",
    summary: "this VM's own configuration refuses postcopy, whatever the host allows",
    evidence: [({ checks }) => failing(checks, CONFIG).map((c) => `${c.id}: ${c.detail}`)],
    fix: [({ checks }) => failing(checks, CONFIG).flatMap((c) => (c.hint ? [c.hint] : []))],
  },
  "vm-hugepages": {
    when: ({ checks }) => failing(checks, ["vm-hugepages"]).length > 0,
    blocks: "qemu",
    summary:
      "this host's huge page pool cannot hold this incoming VM's memory, placed from it page by page in postcopy",
    evidence: [({ checks }) => failing(checks, ["vm-hugepages"]).map((c) => `${c.id}: ${c.detail}`)],
    fix: [({ checks }) => failing(checks, ["vm-hugepages"]).map((c) => c.hint!)],
  },
} satisfies Record<string, Cause>;
const CONFIG = ["vm-memory", "vm-devices", "vm-readonly", "vm-confidential"];
const failing = (checks: Check[], ids: string[]) => checks.filter((c) => ids.includes(c.id) && c.status === "fail");
