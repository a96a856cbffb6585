/**
 * What talks to or about QEMU: where the QEMU that will run is, its version (read from the binary
 * without running it), whether it carries cap_sys_ptrace, `--qemu`'s question over QMP, and the
 * context QEMU runs in — `--user`'s user, or `--pid`'s running QEMU with its ids, cgroups, /dev,
 * seccomp filter, label and its VM's configuration. probe.ts loads this module only when it must know
 * its QEMU or such an option is given, so a default run does not pay for it.
 *
 * ```ts
 * import { identify } from "./qemu.ts";
 * const qemu = identify(sys, facts, opts); // { path, version, major, ptrace } or { error }
 * ```
 */
import type { R, Sys } from "./ffi.ts";
import * as K from "./ffi.ts";
import type { Check, Facts, Options } from "./probe.ts";

/** QEMU's own answer to migrate-set-capabilities postcopy-ram, and whether (and why not) it agrees with the probe. */
export type QemuAnswer = {
  path: string;
  version: string;
  accepts: boolean;
  message: string;
  agrees?: boolean;
  why?: string;
};
/** The QEMU that will run, as far as the probe could tell; `error` says what it could not. */
export type Qemu = {
  path: string | null;
  version: string | null;
  major?: number;
  ptrace: boolean;
  /** A fix may offer it a file capability: root owns it, no one else can write it, and it is the host's. */
  grantable?: boolean;
  answer?: QemuAnswer;
  error?: string;
};

/** Where QEMU is looked for when --qemu names none: qemu-system-ARCH on $PATH, then these. */
const QEMU_PLACES = ["/usr/libexec/qemu-kvm", "/usr/bin/qemu-kvm"];
const QMP = [
  { execute: "qmp_capabilities" },
  { execute: "migrate-set-capabilities", arguments: { capabilities: [{ capability: "postcopy-ram", state: true }] } },
  { execute: "quit" },
]
  .map((c) => `${JSON.stringify(c)}\n`)
  .join("");
const ARGS = "-machine none -nodefaults -no-user-config -display none -incoming defer -qmp stdio".split(" ");
/** A QMP exchange is a few hundred bytes: more than this without an answer is not QEMU talking. */
const OUTPUT_MAX = 1 << 16;
const VERSION_RE = /QEMU emulator version (\d+)\.(\d+)\.(\d+)/;
/** linux/capability.h: vfs_cap_data's magic_etc flag, and the bit of CAP_SYS_PTRACE in its permitted mask. */
const [VFS_CAP_FLAGS_EFFECTIVE, CAP_SYS_PTRACE] = [1, 19];

/** Text from a child, made safe for a one-line report: no control characters, at most 200 characters. */
export const sanitize = (text: string) => {
  const flat = text.replace(/\p{Cc}+/gu, " ").trim();
  return flat.length > 200 ? `${flat.slice(0, 200)}…` : flat;
};
/** For the bytes of a binary, where only the ASCII of a version string is looked for. */
const cp1252 = new TextDecoder("latin1");
/** The largest file searched for a version (QEMU's binaries are tens of MiB), read a chunk at a time. */
const [BINARY_MAX, CHUNK] = [1 << 29, 1 << 20];

/** The QEMU that will run: --qemu's PATH, else qemu-system-ARCH on $PATH, else a distribution's place. */
function find(sys: Sys, given: string | true | null) {
  if (typeof given === "string") return given;
  const name = `qemu-system-${K.arch!.name}`;
  return Bun.which(name, { PATH: process.env.PATH ?? "" }) ?? QEMU_PLACES.find((q) => sys.stat(q).ret === 0) ?? null;
}

/**
 * Whether root may trust `path` as the host's own: the file it resolves to, and every directory above
 * it, owned by root and writable by no one else. Only such a file is run, or offered a file capability.
 */
export function hostOwned(sys: Sys, path: string) {
  let real: string;
  try {
    real = (require("node:fs") as typeof import("node:fs")).realpathSync(path);
  } catch {
    return false;
  }
  for (let at = real; ; at = at.slice(0, at.lastIndexOf("/")) || "/") {
    const st = sys.stat(at);
    const othersWrite = st.mode & 0o002 || (st.mode & 0o020 && st.gid !== 0);
    if (st.ret < 0 || st.uid !== 0 || othersWrite) return false;
    if (at === "/") return true;
  }
}

/** Whether the binary's file capabilities give CAP_SYS_PTRACE (permitted and effective) to whoever runs it. */
export function fileCapPtrace(sys: Sys, path: string) {
  const cap = sys.xattr(path, "security.capability");
  if (!cap || cap.length < 8) return false;
  const view = new DataView(cap.buffer, cap.byteOffset, cap.byteLength);
  return (
    (view.getUint32(0, true) & VFS_CAP_FLAGS_EFFECTIVE) !== 0 && ((view.getUint32(4, true) >> CAP_SYS_PTRACE) & 1) === 1
  );
}

/**
 * "QEMU emulator version X.Y.Z" from a file's own bytes, never by running it: opened non-blocking and
 * read only when it is a regular file of at most BINARY_MAX bytes, until `deadline` (Date.now() ms).
 * "script" for a `#!` file; null when there is no version, or it could not be read in time.
 */
export function versionIn(sys: Sys, path: string, deadline: number): string | null {
  const fd = sys.open(path, K.O_RDONLY | K.O_CLOEXEC | K.O_NONBLOCK);
  if (fd.ret < 0) return null;
  try {
    const st = sys.stat("", fd.ret, K.AT_EMPTY_PATH);
    if (st.ret < 0 || (st.mode & K.S_IFMT) !== K.S_IFREG || st.size > BINARY_MAX) return null;
    const chunk = new Uint8Array(CHUNK);
    for (let [tail, at] = ["", 0]; Date.now() < deadline; ) {
      const n = sys.read(fd.ret, chunk).ret;
      if (n <= 0) return null;
      const text = tail + cp1252.decode(chunk.subarray(0, n));
      if (at === 0 && text.startsWith("#!")) return "script";
      const m = text.match(VERSION_RE);
      if (m) return `${m[1]}.${m[2]}.${m[3]}`;
      [tail, at] = [text.slice(-64), at + n]; // the string may straddle two chunks
    }
    return null;
  } finally {
    sys.close(fd.ret);
  }
}

/** The version of a QEMU found on root's PATH or in a fixed place: a wrapper script of the host's own is run. */
function versionOf(sys: Sys, path: string, deadline: number) {
  const read = versionIn(sys, path, deadline);
  if (read !== "script") return read;
  if (!hostOwned(sys, path)) return null;
  const ran = runBounded(sys, [path, "--version"], "", (out) => VERSION_RE.test(out), deadline - Date.now());
  const m = ran.out.match(VERSION_RE);
  return m ? `${m[1]}.${m[2]}.${m[3]}` : null;
}

/**
 * The QEMU that will run, found and read within one deadline: its path, version and file capability,
 * whether a fix may grant it one; with --qemu, its own answer.
 */
export function identify(sys: Sys, facts: Facts, opts: Options): Qemu {
  const deadline = Date.now() + opts.qemuMs;
  const path = find(sys, opts.qemu);
  const looked = `qemu-system-${facts.arch} on $PATH, ${QEMU_PLACES.join(", ")}`;
  if (!path) return { path: null, version: null, ptrace: false, error: `no QEMU found: looked for ${looked}` };
  const [ptrace, grantable] = [fileCapPtrace(sys, path), hostOwned(sys, path)];
  const asked = opts.qemu === null ? null : askQemu(sys, path, opts.qemuMs);
  const answer = typeof asked === "string" ? undefined : (asked ?? undefined);
  const version = answer?.version ?? versionOf(sys, path, deadline);
  const error =
    typeof asked === "string" ? `${path}: ${asked}` : version ? undefined : `${path}: no version could be read`;
  const major = version ? Number(version.split(".")[0]) : undefined;
  return { path, version, major, ptrace, grantable, answer, error };
}

/** The JSON objects among a child's output lines; anything else is left out. */
function objects(lines: string[]) {
  return lines.flatMap((line) => {
    try {
      const value = JSON.parse(line);
      return value && typeof value === "object" && !Array.isArray(value) ? [value as Record<string, unknown>] : [];
    } catch {
      return [];
    }
  });
}
/** `{"QMP": {"version": {"qemu": {"major": 7, ...}}}}` as "7.2.0", or null for anything else. */
function greetingVersion(replies: Record<string, unknown>[]) {
  const v = (replies.find((r) => "QMP" in r)?.QMP as { version?: { qemu?: Record<string, unknown> } } | undefined)
    ?.version?.qemu;
  const parts = [v?.major, v?.minor, v?.micro];
  return parts.every((n) => Number.isInteger(n)) ? parts.join(".") : null;
}

/** What a bounded run gave: its stdout and stderr as text, and why it was stopped early, if it was. */
type Ran = { out: string; err: string; stopped?: string };
/**
 * Runs `argv` in a process group of its own with `input` on its stdin, reading its stdout and stderr
 * until `done(stdout)` holds or both close, for at most `ms` and OUTPUT_MAX bytes; the whole group (a
 * script's own children too) is killed at the end, whatever it did.
 */
function runBounded(sys: Sys, argv: string[], input: string, done: (out: string) => boolean, ms: number): Ran {
  const pipes = [sys.pipe(), sys.pipe(), sys.pipe()]; // stdin, stdout, stderr
  const [stdin, out, err] = pipes.map((p) => p.ends);
  // Each end is closed once: a number closed twice could be someone else's fd by then.
  const owned = new Set(pipes.flatMap((p) => p.ends).filter((fd) => fd >= 0));
  const close = (...fds: number[]) => {
    for (const fd of fds) if (owned.delete(fd)) sys.close(fd);
  };
  let child: ReturnType<typeof Bun.spawn> | null = null;
  const text = ["", ""];
  const ran = (stopped?: string): Ran => ({ out: text[0], err: text[1], stopped });
  try {
    if (pipes.some((p) => p.ret < 0)) return ran("could not make a pipe");
    sys.write(stdin[1], input); // a few hundred bytes at most: the pipe holds them until the child reads
    try {
      child = Bun.spawn(argv, { stdio: [stdin[0], out[1], err[1]], detached: true });
    } catch (e) {
      return ran(sanitize((e as Error).message));
    }
    close(stdin[0], stdin[1], out[1], err[1]); // the child has its own copies: EOF comes when they go
    const chunk = new Uint8Array(4096);
    const open = [true, true]; // stdout, stderr: until every writer closed them
    const take = (i: number) => {
      const n = sys.read([out[0], err[0]][i], chunk).ret;
      if (n > 0) text[i] += K.latin1(chunk.subarray(0, n));
      else open[i] = false;
    };
    // Done once `done` holds: a grandchild holding the pipe open does not matter.
    for (const deadline = Date.now() + ms; open[0] && !done(text[0]); ) {
      if (Date.now() > deadline) return ran(`no answer within ${ms} ms: killed`);
      const { revents } = sys.poll(out[0], 50, open[1] ? err[0] : -1);
      for (const i of [0, 1]) if (revents[i] && open[i]) take(i);
      if (text[0].length + text[1].length > OUTPUT_MAX)
        return ran(`more than ${OUTPUT_MAX} bytes of output and no answer: killed`);
    }
    // What stderr already holds is read too (QEMU 7.2 says why there), without waiting for more.
    while (open[1] && text[1].length < OUTPUT_MAX && sys.poll(err[0], 0).ret > 0) take(1);
    return ran();
  } finally {
    close(...owned);
    try {
      if (child) process.kill(-child.pid, "SIGKILL"); // the whole group
    } catch {
      // already gone
    }
  }
}

/**
 * QEMU's own answer: an incoming VM with no guest, no disk and no network, asked over QMP on stdio to
 * turn postcopy-ram on, as `migrate-set-capabilities` does before a migration. The exchange is complete
 * with that reply (quit's is not waited for).
 */
export function askQemu(sys: Sys, path: string, timeoutMs: number): QemuAnswer | string {
  const ran = runBounded(sys, [path, ...ARGS], QMP, (out) => replies(out).length >= 2, timeoutMs);
  if (ran.stopped) return ran.stopped;
  const text = [ran.out, ran.err];
  const version = greetingVersion(objects(text[0].split("\n")));
  const answer = replies(text[0])[1];
  const said = sanitize(
    [...text[1].split("\n"), ...text[0].split("\n")].find((l) => l.trim() && !objects([l]).length) ?? "",
  );
  if (!version) return `no QMP greeting with a version${said ? `: ${said}` : ""}`;
  if (!answer) return `no QMP answer to migrate-set-capabilities${said ? `: ${said}` : ""}`;
  // QEMU before 8.1 says why on stderr ("postcopy_ram_supported_by_host: userfaultfd not available: ...").
  const why = text[1]
    .split("\n")
    .filter((l) => /postcopy|userfault/i.test(l))
    .map(sanitize);
  const error = answer.error as { desc?: unknown } | undefined;
  const message = error ? [sanitize(String(error.desc ?? "an error")), ...why].join(": ") : "";
  return { path, version, accepts: !error, message };
}
/** QMP's replies (objects with `return` or `error`) among the lines of `text`. */
const replies = (text: string) => objects(text.split("\n")).filter((r) => "return" in r || "error" in r);

/** The --qemu check: QEMU's answer beside the probe's own for that same QEMU version. */
/** QEMU's answer beside the probe's; `probeSays` is null when the probe could not judge postcopy-ram. */
export function checkQemu(qemu: Qemu | null, probeSays: boolean | null): Check {
  const head = { id: "qemu", title: "QEMU's own answer (migrate-set-capabilities)" };
  const answer = qemu?.answer;
  if (!answer) return { ...head, status: "fail", detail: qemu?.error ?? "no QEMU found" };
  const verb = answer.accepts ? "accepts postcopy-ram" : `rejects postcopy-ram: ${answer.message}`;
  const told = `QEMU ${answer.version} ${verb}`;
  if (probeSays === null)
    return { ...head, status: answer.accepts ? "pass" : "fail", detail: `${told}, which the probe could not judge` };
  answer.agrees = answer.accepts === probeSays;
  if (!answer.agrees) answer.why = "the reason is not known to the probe: QEMU's answer decides";
  const differ = `THE PROBE SAID ${probeSays ? "YES" : "NO"}: ${answer.why}`;
  const detail = answer.agrees ? `${told}, as the probe says` : `${told}; ${differ}`;
  return { ...head, status: answer.accepts && answer.agrees ? "pass" : "fail", detail };
}

// ── Context: the user and the process QEMU really runs as (--user, --pid) ──

/** Tells the child which process started it: the parent's pid, which must be its getppid(). */
const CHILD = "POSTCOPY_PROBE_PARENT";
const MAX_ID = 4294967294; // (uid_t)-1 means "no change", not an id
/** A wrong --user or --pid: exit 2 with the message and the usage line, as probe.ts's UsageError. */
const usage = (message: string) => Object.assign(new Error(message), { name: "UsageError" });
const quoted = (arg: string) => JSON.stringify(arg.length > 60 ? `${arg.slice(0, 60)}…` : arg);
const rows = (sys: Sys, path: string) => (sys.readText(path) ?? "").split("\n").map((l) => l.split(":"));
const field = (text: string | null, key: string) => text?.match(new RegExp(`^${key}:\\s*(.*)$`, "m"))?.[1] ?? null;
const id = (v = "") => (/^\d{1,10}$/.test(v) && Number(v) <= MAX_ID ? Number(v) : null);
const DEVICE = "/dev/userfaultfd";

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
};

/**
 * The context asked for: --user NAME|UID from /etc/passwd and /etc/group; --pid PID, in the parent,
 * only that the process is there (the child reads it whole). Usage errors otherwise.
 */
export function contextOf(sys: Sys, opts: Options): Context {
  if (process.getuid!() !== 0)
    throw usage(`--${opts.pid !== null ? "pid" : "user"} needs root: this is uid ${process.getuid!()}`);
  if (opts.pid !== null) {
    processed(sys, opts.pid);
    return { name: "", uid: 0, gid: 0, groups: [] };
  }
  const who = opts.user!;
  if (!who) throw usage(`Invalid user "": give a name or a uid`);
  const entry = rows(sys, "/etc/passwd").find((r) => r.length > 3 && (r[0] === who || r[2] === who));
  if (!entry) throw usage(`Unknown user ${quoted(who)}: not in /etc/passwd`);
  const [name, uid, gid] = [entry[0], id(entry[2]), id(entry[3])];
  if (uid === null || gid === null) throw usage(`User ${quoted(who)} has no sound uid and gid in /etc/passwd`);
  const groups = rows(sys, "/etc/group").filter((g) => g[3]?.split(",").includes(name) && id(g[2]) !== null);
  return { name, uid, gid, groups: [gid, ...groups.map((g) => id(g[2])!)] };
}
/** /proc/PID/status, or a usage error when the process is gone or unreadable. */
function processed(sys: Sys, pid: number) {
  const status = sys.readText(`/proc/${pid}/status`);
  if (status === null) throw usage(`No process ${pid}: /proc/${pid} is gone or unreadable`);
  return status;
}

/** Whether this process is the child a parent probe started (a variable set by hand changes nothing). */
export const isChild = (sys: Sys) => String(sys.getppid()) === process.env[CHILD];
/** A child whose parent went before the child could tell: the variable names a process that is gone or dead. */
export function isOrphan(sys: Sys) {
  const parent = process.env[CHILD] ?? "";
  if (!/^\d+$/.test(parent) || isChild(sys)) return false;
  const stat = sys.readText(`/proc/${parent}/stat`);
  return stat === null || /^\d+ \(.*\) [ZX] /s.test(stat);
}

/** How long the child may take: its checks, and what --bench and --qemu add. */
export const childMs = (opts: Options) => 60_000 + (opts.bench ? 60_000 : 0) + (opts.qemu !== null ? opts.qemuMs : 0);
/**
 * The whole probe again in a child that takes on the context first; signals go on to it; its status is
 * the answer. The wait is bounded by `ms`: a child still there then is killed, and the run is exit 2.
 */
export async function runInContext(argv: string[], ms: number, command?: string[]) {
  // A compiled binary is its own script; `bun probe.ts` needs the script named.
  const self = Bun.main.startsWith("/$bunfs/") ? [process.execPath] : [process.execPath, Bun.main];
  const env = { ...process.env, [CHILD]: String(process.pid) };
  const child = Bun.spawn([...(command ?? self), ...argv], { env, stdio: ["inherit", "inherit", "inherit"] });
  for (const signal of ["SIGINT", "SIGTERM", "SIGHUP"] as const) process.on(signal, () => child.kill(signal));
  if (await within(child.exited, ms)) return child.exitCode ?? 2;
  child.kill("SIGKILL");
  // A child stuck in the kernel may not die at once: the parent does not wait on it for long.
  const gone = await within(child.exited, 1000);
  throw new Error(`The probe's child did not finish within ${ms} ms: killed${gone ? "" : " (it may remain)"}`);
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
export function enterContext(sys: Sys, opts: Options): Context {
  const pid = opts.pid;
  const context = pid === null ? contextOf(sys, opts) : pidContext(sys, pid);
  if (pid !== null) for (const dir of cgroupDirs(sys, pid)) joinCgroup(sys, dir);
  // QEMU's own CAP_SYS_PTRACE (its binary's file capability) comes along: the syscall's gate is then QEMU's.
  const exe = pid === null ? find(sys, opts.qemu) : null;
  const capEff = context.process?.capEff ?? "";
  const ptrace = exe
    ? fileCapPtrace(sys, exe)
    : /^[0-9a-f]+$/i.test(capEff) && ((BigInt(`0x${capEff}`) >> 19n) & 1n) === 1n;
  context.ptrace = ptrace && context.uid !== 0;
  const r = sys.become(context.uid, context.gid, context.groups, ptrace);
  if (r.ret < 0) throw new Error(`Cannot become ${context.name} (uid ${context.uid}): ${K.errnoName(r.errno)}`);
  // Set after the ids change (which clears it), then checked: the parent may have gone in between.
  sys.prctl(K.PR_SET_PDEATHSIG, K.SIGKILL);
  if (!isChild(sys)) throw new Error("The parent probe is gone");
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
  return {
    pid,
    comm: sys.readText(`${at}/comm`)?.trim() ?? null,
    exe: seen(link(`${at}/exe`)),
    uids: field(status, "Uid")?.split(/\s+/).map(Number) ?? [],
    gids: field(status, "Gid")?.split(/\s+/).map(Number) ?? [],
    groups: (field(status, "Groups") ?? "").split(/\s+/).filter(Boolean).map(Number),
    capEff: field(status, "CapEff"),
    noNewPrivs: num("NoNewPrivs") === 1,
    seccomp: num("Seccomp"),
    seccompFilters: num("Seccomp_filters"),
    uidMap: sys.readText(`${at}/uid_map`)?.trim().split("\n")[0].trim().replace(/\s+/g, " ") ?? null,
    ownMountNamespace: link(`${at}/ns/mnt`) !== link("/proc/self/ns/mnt"),
    root,
    cwd: seen(link(`${at}/cwd`)),
    cgroups: (sys.readText(`${at}/cgroup`) ?? "").trim().split("\n"),
    label: sys.readText(`${at}/attr/current`)?.replace(/\0/g, "").trim() || null,
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
/** libc calls only --pid makes: openat2 (no libc wrapper: the syscall), and what an equivalent walk needs. */
const T = K.FFIType;
export const pidCalls = () =>
  K.openLibc({
    syscall: {
      args: [T.i64, T.i32, T.ptr, T.ptr, T.u64],
      returns: T.i64_fast,
    },
    openat: { args: [T.i32, T.ptr, T.i32], returns: T.i32 },
    readlinkat: { args: [T.i32, T.ptr, T.ptr, T.u64], returns: T.i64_fast },
  });
type PidCalls = ReturnType<typeof pidCalls>;

/**
 * `path` resolved inside the directory `root` as a process whose root it is resolves it, as an O_PATH
 * fd (or the errno): `..` and absolute symbolic links stay inside, magic links are refused. openat2()
 * with RESOLVE_IN_ROOT where the kernel has it (5.6+), else the same walk, a component at a time.
 */
export function resolveIn(sys: Sys, c: PidCalls, root: number, path: string): R {
  const how = new BigUint64Array([BigInt(K.O_PATH | K.O_CLOEXEC), 0n, BigInt(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)]);
  const r = K.answer(c.syscall(NR_OPENAT2, root, K.cstr(path), how, how.byteLength) as number);
  return r.errno === ENOSYS ? walkIn(sys, c, root, path) : r;
}
/**
 * The walk: openat(O_PATH|O_NOFOLLOW) a component at a time; a link's text is followed inside `root`.
 * `enters(fd)`, when given, is asked of each file reached before anything looks at or into it: a reason
 * stops the walk there (a FUSE mount that may never answer), unless that file is the last.
 */
export function walkIn(
  sys: Sys,
  c: PidCalls,
  root: number,
  path: string,
  enters?: (fd: number) => string | null,
): R & { stopped?: string } {
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
  if (uid === undefined || gid === undefined) throw usage(`No process ${pid}: /proc/${pid} is gone or unreadable`);
  if (f.exe === null && !f.cmdline?.length) throw new Error(`${who} is a kernel thread, not a QEMU`);
  if ([process.pid, sys.getppid()].includes(pid)) throw new Error(`${who} is the probe itself, not a QEMU`);
  if (f.cmdline === null)
    throw new Error(`${who}: its command line could not be read whole (over ${K.READ_MAX} bytes)`);
  const root = sys.open(`/proc/${pid}/root`, K.O_PATH | K.O_CLOEXEC);
  if (root.ret < 0) throw new Error(`Cannot open /proc/${pid}/root: ${K.errnoName(root.errno)}`);
  const c = pidCalls();
  // A QEMU started through its dynamic loader (a QEMU in a tree of its own) runs the program the loader was given.
  const exe = f.exe?.replace(/ \(deleted\)$/, "") ?? "";
  const program = /\/ld-[^/]*\.so[^/]*$/.test(exe) ? loadedProgram(f.cmdline) : null;
  const path = program === null ? exe : program.startsWith("/") ? program : `${f.cwd ?? ""}/${program}`;
  if (!/qemu/i.test(path.split("/").at(-1)!)) throw new Error(`${who} is not a QEMU: it runs ${path}`);
  const opened = program === null ? null : resolveIn(sys, c, root.ret, path);
  const binary = opened === null ? `/proc/${pid}/exe` : `/proc/self/fd/${opened.ret}`;
  const read = opened?.ret === -1 ? null : versionIn(sys, binary, Date.now() + 5000);
  const version = read === "script" ? null : read;
  const device = resolveIn(sys, c, root.ret, DEVICE);
  // Only a QEMU of the host's own (this mount namespace and root, root's file) may be offered a file capability.
  const here = !f.ownMountNamespace && f.root === "/" && sameFile(sys, path, `/proc/${pid}/exe`);
  const qemu: Qemu = {
    path,
    version,
    major: version ? Number(version.split(".")[0]) : undefined,
    ptrace: false, // the process's own CapEff decides, and comes along with the child
    grantable: here && hostOwned(sys, path),
    error: version ? undefined : `${path}: no QEMU version could be read from its binary`,
  };
  const vm = configChecks({ ...f, cmdline: f.cmdline, walk: (at) => walkedTo(sys, c, root.ret, at, f.mounts!) });
  const name = rows(sys, "/etc/passwd").find((r) => r[2] === String(uid))?.[0] ?? String(uid);
  return {
    name,
    uid,
    gid,
    groups: [gid, ...f.groups.filter((g) => g !== gid)],
    process: f,
    device: device.ret < 0 ? device.errno : `/proc/self/fd/${device.ret}`,
    qemu,
    ...vm,
    checks: [contextCheck(f, qemu, name), ...vm.checks],
  };
}
/** The file system a path reaches inside the process's root, by its mount (fdinfo's mnt_id): FUSE is not entered. */
function walkedTo(sys: Sys, c: PidCalls, root: number, path: string, mounts: NonNullable<ReturnType<typeof mountsOf>>) {
  const mountOf = (fd: number) => {
    const id = Number(field(sys.readText(`/proc/self/fdinfo/${fd}`), "mnt_id"));
    return mounts.find((m) => m.id === id);
  };
  const fuse = (fd: number) => {
    const m = mountOf(fd);
    return m?.type.startsWith("fuse")
      ? `it lies under the ${m.type} mount at ${m.point}, which the probe does not enter`
      : null;
  };
  const r = walkIn(sys, c, root, path, fuse);
  if (r.stopped) return { type: null, how: r.stopped };
  if (r.ret < 0) return { type: null, how: `its path in the process's root: ${K.errnoName(r.errno)}` };
  const type = mountOf(r.ret)?.type ?? null;
  sys.close(r.ret);
  return { type, how: type ? "its path in the process's root" : "its mount is not in the process's mount table" };
}
/** Whether two paths name the same file (the same device and inode). */
function sameFile(sys: Sys, a: string, b: string) {
  const [x, y] = [sys.stat(a), sys.stat(b)];
  return x.ret === 0 && y.ret === 0 && x.dev === y.dev && x.ino === y.ino;
}

/** What the child cannot take on of the process (its seccomp filter, label, namespaces), with its known effect. */
function contextCheck(f: ReturnType<typeof processFacts>, qemu: Qemu, name: string): Check {
  const head = { id: "context", title: "the running process's own context (--pid)", vm: true };
  const args = f.cmdline ?? [];
  const sandbox = args.some((a, i) => /^--?sandbox$/.test(args[i - 1] ?? "") && /^on\b/.test(a));
  const what = [
    `${f.comm}[${f.pid}] runs as ${name} (uid ${f.uids[1]}), QEMU ${qemu.version ?? "of no known version"}`,
    f.ownMountNamespace ? "a mount namespace of its own" : "the host's mount namespace",
    `cgroup ${f.cgroups.find((c) => c.startsWith("0::"))?.slice(3) ?? f.cgroups[0]?.split(":")[2]}`,
    ...(f.label ? [`label ${f.label}`] : []),
  ].join(", ");
  if (f.seccomp !== 2) return { ...head, status: "pass", detail: what };
  // Measured with QEMU 7.2: postcopy-ram accepted as root under libvirt's -sandbox on,obsolete=deny,... filter.
  if (sandbox && f.seccompFilters === 1)
    return { ...head, status: "pass", detail: `${what}; QEMU's own -sandbox filter does not deny userfaultfd` };
  const effect = "if one denies userfaultfd(2), QEMU before 8.0 fails";
  const unknown = `${f.seccompFilters} seccomp filter(s) the probe cannot take on: ${effect}`;
  return { ...head, status: "warn", detail: `${what}; ${unknown}`, unknownFilter: true };
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
    vm: true,
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
  return { id: "vm-devices", title: "this VM's devices", status, detail, vm: true, hint };
}
