/**
 * The QEMU binary: where the QEMU that will run is, its version (read from its bytes, never by
 * running it unless it is the host's own), whether it carries cap_sys_ptrace, and --qemu's question
 * over QMP. probe.ts loads this file only when it must know its QEMU (the routes disagree, the syscall
 * says EPERM, --qemu), and context.ts for --user and --pid.
 *
 * ```ts
 * import { identify } from "./qemu.ts";
 * const qemu = identify(sys, facts, opts); // { path, version, major, ptrace } or { error }
 * ```
 */

import type { Sys } from "./ffi.ts";
import * as K from "./ffi.ts";
import { absolutePath, answered, atLeast, DEVICE, sanitize, sh, unanswered } from "./shared.ts";
import type * as T from "./types.ts";

/** Where QEMU is looked for when --qemu names none: qemu-system-ARCH on $PATH, then these. */
const QEMU_PLACES = ["/usr/libexec/qemu-kvm", "/usr/bin/qemu-kvm"];
const capability = (name: string) => ({
  execute: "migrate-set-capabilities",
  arguments: { capabilities: [{ capability: name, state: true }] },
});
/** postcopy-ram, then multifd beside it (KubeVirt's parallel migration): each answer, one reply each. */
const QMP = [{ execute: "qmp_capabilities" }, capability("postcopy-ram"), capability("multifd"), { execute: "quit" }]
  .map((c) => `${JSON.stringify(c)}\n`)
  .join("");
const ARGS = "-machine none -nodefaults -no-user-config -display none -incoming defer -qmp stdio".split(" ");
/** A QMP exchange is a few hundred bytes: more than this without an answer is not QEMU talking. */
const OUTPUT_MAX = 1 << 16;
const VERSION_RE = /QEMU emulator version (\d+)\.(\d+)\.(\d+)/;
/** linux/capability.h: vfs_cap_data's magic_etc flag, and the bit of CAP_SYS_PTRACE in its permitted mask. */
const [VFS_CAP_FLAGS_EFFECTIVE, CAP_SYS_PTRACE] = [1, 19];
// include/uapi/asm-generic/poll.h
const POLLIN = 1;
/** Enough for security.capability (24 bytes) and an ACL of 100 entries. */
const XATTR_MAX = 1024;
const F = K.FFIType;
/** libc calls only this file makes: a file capability's xattr, and the pipes and poll of a bounded run. */
const calls = () =>
  K.openLibc({
    getxattr: { args: [F.ptr, F.ptr, F.ptr, F.u64], returns: F.i64_fast },
    pipe2: { args: [F.ptr, F.i32], returns: F.i32 },
    poll: { args: [F.ptr, F.u64, F.i32], returns: F.i32 },
  });
let opened: ReturnType<typeof calls> | null = null;
const libc = () => (opened ??= calls());

/** For the bytes of a binary, where only the ASCII of a version string is looked for. */
const cp1252 = new TextDecoder("latin1");
/** The largest file searched for a version (QEMU's binaries are tens of MiB), read a chunk at a time. */
const [BINARY_MAX, CHUNK] = [1 << 29, 1 << 20];

/** The QEMU that will run: --qemu's PATH, else qemu-system-ARCH on $PATH, else a distribution's place. */
export function find(sys: Sys, given: string | true | null) {
  if (typeof given === "string") return given;
  const name = `qemu-system-${K.arch!.name}`;
  return Bun.which(name, { PATH: absolutePath() }) ?? QEMU_PLACES.find((q) => sys.stat(q).ret === 0) ?? null;
}

/**
 * The file `path` resolves to when root may trust it as the host's own, else null: that file and every
 * directory above it owned by root and writable by no one else. Only such a file is run, or offered a
 * file capability, and by that path: no link on the way is followed again.
 */
function hostOwned(sys: Sys, path: string) {
  let real: string;
  try {
    real = (require("node:fs") as typeof import("node:fs")).realpathSync(path);
  } catch {
    return null;
  }
  for (let at = real; ; at = at.slice(0, at.lastIndexOf("/")) || "/") {
    if (!rootsAlone(sys.stat(at))) return null;
    if (at === "/") return real;
  }
}
/** A stat of a file root owns and no one else can write (a group other than root's may not either). */
export const rootsAlone = (st: { ret: number; uid: number; gid: number; mode: number }) =>
  st.ret === 0 && st.uid === 0 && !(st.mode & 0o002) && !(st.mode & 0o020 && st.gid !== 0);

/** Whether the binary's file capabilities give CAP_SYS_PTRACE (permitted and effective) to whoever runs it. */
export function fileCapPtrace(path: string) {
  const value = new Uint8Array(XATTR_MAX);
  const n = Number(libc().getxattr(K.cstr(path), K.cstr("security.capability"), value, value.length));
  const cap = value.subarray(0, Math.max(n, 0));
  if (cap.length < 8) return false;
  const view = new DataView(cap.buffer, cap.byteOffset, cap.byteLength);
  return (
    (view.getUint32(0, true) & VFS_CAP_FLAGS_EFFECTIVE) !== 0 && ((view.getUint32(4, true) >> CAP_SYS_PTRACE) & 1) === 1
  );
}

/**
 * "QEMU emulator version X.Y.Z" from a file's own bytes, never by running it: opened (non-blocking) and
 * read only when it is a regular file of at most BINARY_MAX bytes, until `deadline` (Date.now() ms).
 * "script" for a `#!` file; null when there is no version, or it could not be read in time.
 */
export function versionIn(sys: Sys, path: string, deadline: number): string | null {
  const fd = openRegular(sys, path);
  if (fd < 0) return null;
  try {
    const chunk = new Uint8Array(CHUNK);
    for (let [kept, at] = [0, 0]; Date.now() < deadline; at++) {
      const n = sys.read(fd, chunk.subarray(kept)).ret;
      if (n <= 0) return null;
      const end = kept + n;
      if (at === 0 && startsScript(chunk.subarray(0, end))) return "script";
      const bytes = chunk.subarray(0, end);
      for (let i = indexOf(bytes, NEEDLE, 0); i >= 0; i = indexOf(bytes, NEEDLE, i + 1)) {
        const m = cp1252.decode(bytes.subarray(i, i + 64)).match(VERSION_RE);
        if (m) return `${m[1]}.${m[2]}.${m[3]}`;
      }
      // The string may straddle two chunks: the last 64 bytes begin the next one.
      kept = Math.min(64, end);
      chunk.copyWithin(0, end - kept, end);
    }
    return null;
  } finally {
    sys.close(fd);
  }
}
/**
 * A file opened to be read (non-blocking), or -1: only a regular file of at most BINARY_MAX bytes. It is
 * looked at before it is opened, as opening a device (a tty, a tape) or a FIFO can do something.
 */
function openRegular(sys: Sys, path: string) {
  const where = sys.open(path, K.O_PATH | K.O_CLOEXEC);
  if (where.ret < 0) return -1;
  const st = sys.stat("", where.ret, K.AT_EMPTY_PATH);
  const regular = st.ret === 0 && (st.mode & K.S_IFMT) === K.S_IFREG && st.size <= BINARY_MAX;
  const fd = regular ? sys.open(`/proc/self/fd/${where.ret}`, K.O_RDONLY | K.O_CLOEXEC | K.O_NONBLOCK).ret : -1;
  sys.close(where.ret);
  return fd;
}
const startsScript = (head: Uint8Array) => head[0] === 0x23 && head[1] === 0x21; // "#!"
/** Whether a file is a `#!` script: the kernel runs its interpreter instead. */
function isScript(sys: Sys, path: string) {
  const fd = openRegular(sys, path);
  if (fd < 0) return false;
  const head = new Uint8Array(2);
  const n = sys.read(fd, head).ret;
  sys.close(fd);
  return n === 2 && startsScript(head);
}
/** Where `needle` is in `bytes` from `from` on, or -1: native indexOf finds its first byte; the rest is compared. */
function indexOf(bytes: Uint8Array, needle: Uint8Array, from: number) {
  let i = bytes.indexOf(needle[0], from);
  while (i >= 0 && i + needle.length <= bytes.length) {
    let j = 1;
    while (j < needle.length && bytes[i + j] === needle[j]) j++;
    if (j === needle.length) return i;
    i = bytes.indexOf(needle[0], i + 1);
  }
  return -1;
}
const NEEDLE = Uint8Array.from("QEMU emulator version ", (c) => c.charCodeAt(0));

/** The version of a QEMU found on root's PATH or in a fixed place: a wrapper script of the host's own is run. */
function versionOf(sys: Sys, path: string, deadline: number) {
  const read = versionIn(sys, path, deadline);
  if (read !== "script") return read;
  const real = hostOwned(sys, path);
  if (!real) return null;
  const ran = runBounded(sys, [real, "--version"], "", (out) => VERSION_RE.test(out), deadline - Date.now());
  const m = ran.out.match(VERSION_RE);
  return m ? `${m[1]}.${m[2]}.${m[3]}` : null;
}

/**
 * The QEMU that will run, found and read within one deadline: its path, version and file capability,
 * whether a fix may grant it one; with --qemu, its own answer.
 */
export function identify(sys: Sys, facts: T.Facts, opts: T.Options): T.Qemu {
  const deadline = Date.now() + opts.qemuMs;
  const path = find(sys, opts.qemu);
  const looked = `qemu-system-${facts.arch} on $PATH, ${QEMU_PLACES.join(", ")}`;
  if (!path) return { path: null, version: null, ptrace: false, error: `no QEMU found: looked for ${looked}` };
  const owned = hostOwned(sys, path);
  const [ptrace, grantable] = [fileCapPtrace(path), owned && !isScript(sys, owned) ? owned : null];
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

/** A pipe, both ends close-on-exec: ret 0 and [read, write], or the errno. */
export function pipe() {
  const ends = new Int32Array(2);
  return { ...K.answer(libc().pipe2(ends, K.O_CLOEXEC)), ends: [ends[0], ends[1]] };
}
/** poll() for POLLIN on one fd, or on a second one too: ret how many are ready, 0 timed out; revents per fd. */
export function poll(fd: number, timeoutMs: number, other = -1) {
  const pollfd = new Int32Array([fd, POLLIN, other, POLLIN]); // each pollfd: fd, then events (low half), revents
  const ready = K.answer(libc().poll(pollfd, other < 0 ? 1 : 2, timeoutMs));
  return { ...ready, revents: [pollfd[1] >>> 16, pollfd[3] >>> 16] };
}

/** What a bounded run gave: its stdout and stderr as text, and why it was stopped early, if it was. */
type Ran = { out: string; err: string; stopped?: string };
/**
 * Runs `argv` in a process group of its own with `input` on its stdin, reading its stdout and stderr
 * until `done(stdout)` holds or both close, for at most `ms` and OUTPUT_MAX bytes; the whole group (a
 * script's own children too) is killed at the end, whatever it did.
 */
function runBounded(sys: Sys, argv: string[], input: string, done: (out: string) => boolean, ms: number): Ran {
  const pipes = [pipe(), pipe(), pipe()]; // stdin, stdout, stderr
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
      const { revents } = poll(out[0], 50, open[1] ? err[0] : -1);
      for (const i of [0, 1]) if (revents[i] && open[i]) take(i);
      if (text[0].length + text[1].length > OUTPUT_MAX)
        return ran(`more than ${OUTPUT_MAX} bytes of output and no answer: killed`);
    }
    // What stderr already holds is read too (QEMU 7.2 says why there), without waiting for more.
    while (open[1] && text[1].length < OUTPUT_MAX && poll(err[0], 0).ret > 0) take(1);
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
 * turn postcopy-ram on, as `migrate-set-capabilities` does before a migration, then multifd beside it.
 * The exchange is complete with those replies (quit's is not waited for).
 */
export function askQemu(sys: Sys, path: string, timeoutMs: number): T.QemuAnswer | string {
  // Complete at multifd's reply, or at postcopy-ram's refusal (multifd beside it is then not asked).
  const complete = (out: string) => {
    const r = replies(out);
    return r.length >= 3 || (r.length === 2 && "error" in r[1]);
  };
  const ran = runBounded(sys, [path, ...ARGS], QMP, complete, timeoutMs);
  const text = [ran.out, ran.err];
  const [, answer, multifd] = replies(text[0]);
  // Stopped with postcopy-ram answered: only multifd is left without an answer.
  if (ran.stopped && !(answer && !answer.error)) return ran.stopped;
  const version = greetingVersion(objects(text[0].split("\n")));
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
  // multifd is asked with postcopy-ram on: QEMU 8.1 to 10.0 refuse the pair; asked alone, it says nothing.
  const refusal = (multifd?.error as { desc?: unknown } | undefined)?.desc;
  const unanswered = { accepts: null, message: ran.stopped ?? "no answer" };
  const pair = error
    ? null
    : multifd
      ? { accepts: !multifd.error, message: refusal ? sanitize(String(refusal)) : "" }
      : unanswered;
  return { path, version, accepts: !error, message, multifd: pair };
}
/** QMP's replies (objects with `return` or `error`) among the lines of `text`. */
const replies = (text: string) => objects(text.split("\n")).filter((r) => "return" in r || "error" in r);

/**
 * --qemu's answer, a real judge beside the probe: QEMU's own answer decides postcopy-ram (and
 * postcopy-multifd when it answered that too); `probeSays` is null when the probe could not judge postcopy-ram,
 * `stands` why the probe's no stands against it.
 */
export function qemuAnswer(
  qemu: T.Qemu | null,
  probeSays: boolean | null,
  stands: string | null,
  required: T.Capability[] = [],
): T.RealAnswer {
  const head = { id: "qemu", title: "QEMU's own answer (migrate-set-capabilities)" };
  const answer = qemu?.answer;
  if (!answer) {
    const check: T.Check = { ...head, status: "fail", detail: qemu?.error ?? "no QEMU found" };
    const unanswered: T.Unjudged = [`--qemu: ${check.detail}`, "give --qemu the path of the QEMU that will run"];
    return { whose: "QEMU's own answer", check, decides: { "postcopy-ram": null }, unanswered, json: {} };
  }
  const whose = `QEMU ${answer.version}'s own answer`;
  // QEMU before 8.1 takes multifd beside postcopy, then its destination aborts: only a refusal is its answer.
  const pair = answer.multifd?.accepts;
  const multifd = answer.multifd && { "postcopy-multifd": pair === null ? null : pair && multifdWith(answer.version) };
  const decides = { "postcopy-ram": answer.accepts, ...multifd };
  // Its silence on multifd leaves only postcopy-multifd unanswered, and only a run that asks for it UNKNOWN.
  const silent: T.Unjudged = [
    `--qemu: QEMU ${answer.version} did not answer multifd beside postcopy-ram (${answer.multifd?.message})`,
    "ask QEMU again, or migrate with --migrate --parallel 4",
  ];
  const unanswered = pair === null && required.includes("postcopy-multifd") ? silent : undefined;
  const verb = answer.accepts ? "accepts postcopy-ram" : `rejects postcopy-ram: ${answer.message}`;
  const told = `QEMU ${answer.version} ${verb}`;
  const said = (status: T.Status, detail: string) => ({
    whose,
    check: { ...head, status, detail },
    decides,
    unanswered,
    json: { qemu: answer },
  });
  if (probeSays === null) return said(answer.accepts ? "pass" : "fail", `${told}, which the probe could not judge`);
  answer.agrees = answer.accepts === probeSays;
  if (!answer.agrees) answer.why = stands && !probeSays ? `${stands}: the probe's no stands` : UNKNOWN_REASON;
  const differ = `THE PROBE SAID ${probeSays ? "YES" : "NO"}: ${answer.why}`;
  return said(
    answer.accepts && answer.agrees ? "pass" : "fail",
    answer.agrees ? `${told}, as the probe says` : `${told}; ${differ}`,
  );
}

const UNKNOWN_REASON = "the reason is not known to the probe: QEMU's answer decides";

/**
 * Why the probe's no stands against a real judge's yes (--qemu, --migrate), or null: what none of them
 * reproduces. Each asks an x86 QEMU of 4 KiB pages, without a --pid VM's configuration or AppArmor profile.
 */
export function standing(checks: T.Check[], facts: T.Facts, context?: T.Context) {
  const unasked = checks.find((c) => c.status === "fail" && (c.id === "page-size" || context?.checks?.includes(c)));
  if (unasked) return `${unasked.id} fails (${unasked.detail}), which the QEMU asked does not reproduce`;
  const profiled = Object.keys(facts.apparmor?.denied ?? {}).length > 0;
  return profiled ? "the process's AppArmor profile denies it, and the QEMU asked does not run under it" : null;
}

/**
 * --qemu and --migrate: real judges beside the probe (QEMU's own answer; a real migration, given), whose answer is
 * the headline for what they answer, unless the probe's no stands (standing()). What none of them could answer, or the
 * probe could not judge and none answered, makes the run UNKNOWN.
 */
export function judgedAlso(
  report: T.Report,
  x: { opts: T.Options; learnt: T.Learnt; judged: T.Judged; context?: T.Context; migration: T.RealAnswer | null },
): T.Report {
  const { opts, learnt, judged, context, migration } = x;
  const stands = standing(report.checks, report.host, context);
  const real: T.RealAnswer[] = [
    ...(opts.qemu === null ? [] : [qemuAnswer(learnt.qemu, judged.ram, stands, opts.require)]),
    ...(migration ? [migration] : []),
  ];
  const decisive = Object.assign({ ...judged.ok }, ...real.map((r) => r.decides)) as Record<T.Capability, boolean>;
  for (const cap of stands ? opts.require.concat("postcopy-ram") : []) decisive[cap] &&= judged.ok[cap];
  // A real judge's answer settles what it answers, whatever the probe could not judge of it.
  const unsettled = opts.require.filter((c) => !real.some((r) => c in r.decides));
  const why = [
    ...real.flatMap((r) => (r.unanswered ? [r.unanswered] : [])),
    ...unanswered(unsettled, judged.unknown),
    ...(context?.unanswered ?? []),
  ];
  const { error: _, settle: __, ...rest } = report;
  const known = why.length === 0;
  return {
    ...rest,
    postcopy: known ? decisive["postcopy-ram"] : null,
    answeredBy:
      stands && !judged.ok["postcopy-ram"] ? undefined : real.findLast((r) => "postcopy-ram" in r.decides)?.whose,
    checks: [...report.checks, ...real.map((r) => r.check)],
    required: { capabilities: opts.require, ok: known ? opts.require.every((c) => decisive[c]) : null },
    ...Object.assign({}, ...real.map((r) => r.json)),
    ...(known ? {} : { error: `could not answer what was asked: ${why.map(([w]) => w).join("; ")}` }),
    ...(known ? {} : { settle: why.map(([, settle]) => settle) }),
  };
}

/**
 * Whether a QEMU version migrates postcopy beside multifd: 8.1 to 10.0 refuse the pair ("Postcopy is not yet
 * compatible with multifd"), and before 8.1 the destination aborts (measured: 7.2); 10.1 made them work together.
 */
export const multifdWith = (version: string) => atLeast(version, 10, 1);

/**
 * The file capability for QEMU's binary: only one root owns and no one else can write, only on this host,
 * and only where an exec grants it (not under NoNewPrivs).
 */
export function setcap({ f, qemu }: T.Seen) {
  const profiled = !!f.apparmor && f.apparmor.ptrace !== "allowed"; // it may deny the capability
  const tool = Bun.which("setcap", { PATH: absolutePath() });
  if (!tool || profiled || f.noNewPrivs || (qemu?.path && !qemu.grantable)) return [];
  const path = qemu?.grantable ? sh(qemu.grantable) : `"$(command -v qemu-system-${f.arch})"`;
  return [`setcap cap_sys_ptrace+ep ${path}   # broad: also lets QEMU ptrace`];
}

/** The causes only a QEMU's version can be, as rows of probe.ts's table: added when a QEMU was read. */
export const CAUSES = {
  "qemu-before-8.0": {
    when: ({ a, qemu }) => (qemu?.major ?? 8) < 8 && a.syscall !== "ok" && a.device === "ok",
    blocks: "qemu",
    upgrade: () => true,
    summary: ({ qemu }) =>
      `QEMU ${qemu?.version} only calls userfaultfd(2); ${DEVICE}, which opens here, needs QEMU 8.0 or later`,
    evidence: [`${DEVICE}: ok`, answered],
    fix: [({ qemu }) => `install QEMU 8.0 or later in place of ${sh(qemu?.path ?? "")}   # the upgrade path`],
  },
  "qemu-multifd": {
    // Only when it is asked for (--parallel, --require postcopy-multifd): few migrate with multifd.
    when: ({ qemu, required }) => required.includes("postcopy-multifd") && !multifdWith(qemu?.version ?? "0"),
    blocks: "multifd",
    upgrade: () => true,
    summary: ({ qemu }) => `QEMU ${qemu?.version} cannot migrate postcopy beside multifd (parallel migration)`,
    evidence: [
      ({ qemu }) =>
        (qemu?.major ?? 0) < 8 || qemu?.version?.startsWith("8.0")
          ? `QEMU ${qemu?.version} takes the pair, then its destination aborts (measured with 7.2)`
          : `QEMU ${qemu?.version} refuses it: "Postcopy is not yet compatible with multifd" (8.1 to 10.0)`,
    ],
    fix: [
      ({ qemu }) => `install QEMU 10.1 or later in place of ${sh(qemu?.path ?? "")}   # the upgrade path`,
      "virsh migrate --live --postcopy DOMAIN URI   # meanwhile: no --parallel (KubeVirt: no parallelMigrationThreads)",
    ],
  },
} satisfies Record<string, T.Cause>;
