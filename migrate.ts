/**
 * --migrate: a real postcopy migration between two QEMUs on this host, the QEMU that will run started
 * twice (a source and an incoming destination) in the context the probe answers for, with a guest of
 * the probe's own that keeps writing to every page of its RAM, so the destination's vCPU faults on pages
 * that have not arrived yet. The source switches to postcopy as soon as the migration is active; what
 * happened (the statuses, the times, the pages requested and QEMU's blocktime) is the answer. Each QEMU
 * starts through the probe itself (`launch()`), which makes it die with the probe and, under --pid,
 * installs the process's seccomp filters before QEMU runs. probe.ts loads this file only for --migrate.
 *
 * ```ts
 * import { migrate } from "./migrate.ts";
 * const m = await migrate(sys, { qemu: "/usr/bin/qemu-system-x86_64", ramMiB: 256, parallel: 0 });
 * // m: { ok, statuses, ... }
 * ```
 */
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import type { Sys } from "./ffi.ts";
import * as K from "./ffi.ts";
import { capBit, field, SELF_ENV, sanitize, self, within } from "./shared.ts";
import type * as T from "./types.ts";

/** What a migration is asked to be: which QEMU, how much RAM, how many multifd channels, which RAM backend. */
export type Plan = {
  qemu: string;
  ramMiB: number;
  parallel: number;
  /**
   * An O_PATH fd of the directory QEMU's RAM is a file in (a --pid VM's mem-path, walked inside its root),
   * else anonymous RAM: each QEMU gets it as its fd 3 and creates its own file there (and unlinks it at once).
   */
  memDir?: number;
  /** --pid: QEMU's own seccomp sandbox as the VM has it (`-sandbox on,...`), which the destination starts with. */
  sandbox?: string[];
  /** The RAM shared (share=on, a memfd): the destination then needs MISSING_SHMEM. */
  shared?: boolean;
  /** --pid: the process's seccomp filters (but QEMU's own sandbox), installed in the destination before QEMU runs. */
  filters?: T.Insn[][];
  /** --pid: the process had NoNewPrivs set (its filters need it when installed without CAP_SYS_ADMIN). */
  noNewPrivs?: boolean;
  /** The whole test's bound. */
  ms?: number;
};

/** The whole migration's bound, and how often the source's status is asked. */
export const MIGRATE_MS = 30_000;
const POLL_MS = 20;
/** How fast the source sends the pages no one asked for (QEMU's max-bandwidth and max-postcopy-bandwidth). */
const BYTES_PER_S = 128 << 20;
/** A QMP reply is small: a monitor that sends more than this without a line is not QEMU talking. */
const LINE_MAX = 1 << 20;
/** Where a migration ends on the source. */
const ENDS = ["completed", "failed", "cancelled", "postcopy-paused"];
/** How the launcher is told who started it (the probe's pid, which must be its parent) and what to install. */
const LAUNCH = "POSTCOPY_PROBE_LAUNCH";
const FILTERS = "POSTCOPY_PROBE_FILTERS";
const NO_NEW_PRIVS = "POSTCOPY_PROBE_NO_NEW_PRIVS";
// include/uapi/linux/prctl.h, seccomp.h, asm-generic/signal.h
const [PR_SET_PDEATHSIG, PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP, SECCOMP_MODE_FILTER, SIGKILL] = [1, 38, 22, 2, 9];
const CAP_SYS_ADMIN = 21n;

const F = K.FFIType;
/** libc calls only this file makes: the launcher's, which end in execve(). */
const calls = () =>
  K.openLibc({
    prctl: { args: [F.i32, F.u64, F.ptr, F.u64, F.u64], returns: F.i32 },
    getppid: { args: [], returns: F.i32 },
    execve: { args: [F.ptr, F.ptr, F.ptr], returns: F.i32 },
    syscall: { args: [F.i64, F.i64, F.i64, F.i64, F.i64], returns: F.i64_fast },
  });
// include/uapi/asm-generic/unistd.h: the same numbers on every architecture (Linux 5.3+).
const [NR_PIDFD_SEND_SIGNAL, NR_PIDFD_OPEN] = [424, 434];
/** The watchdog's first argument, and the prefix of the directories a migration makes (which only it removes). */
const [WATCHDOG, DIR_PREFIX] = ["--watchdog", "postcopy-probe-migrate-"];

/**
 * The guest: the VM's whole firmware (-bios), 64 KiB whose last bytes the CPU runs from reset, so no
 * BIOS boots it (SeaBIOS takes seconds). It enables the A20 line, enters 32-bit protected mode with flat
 * segments, and then forever increments one byte in every 4 KiB page from the top of RAM down to 1 MiB:
 * every page is dirty all the time, so precopy never converges, and on the destination the vCPU goes down
 * while QEMU's stream of pages goes up from each page it asked for, so most pages it touches it must ask for.
 * Offsets are the image's; at reset CS's base is 0xffff0000, so offset X runs at 0xffff0000 + X.
 */
export function firmware(ramBytes: number) {
  const le32 = (n: number) => [n & 0xff, (n >>> 8) & 0xff, (n >>> 16) & 0xff, n >>> 24];
  const code = [
    [0xfa], // ff00: cli                   no interrupts: there is no IDT
    [0xe4, 0x92], // ff01: in al, 0x92     the "fast A20" port
    [0x0c, 0x02], // ff03: or al, 2
    [0xe6, 0x92], // ff05: out 0x92, al    A20 on: every address reaches RAM
    [0x66, 0x2e, 0x0f, 0x01, 0x16, 0x58, 0xff], // ff07: lgdt cs:[0xff58]  o32: the GDT's full 32-bit base
    [0x0f, 0x20, 0xc0], // ff0e: mov eax, cr0
    [0x0c, 0x01], // ff11: or al, 1        CR0.PE: protected mode
    [0x0f, 0x22, 0xc0], // ff13: mov cr0, eax
    [0x66, 0xea, ...le32(0xffffff1e), 0x08, 0x00], // ff16: jmp dword 0x08:0xffffff1e  the 32-bit code segment
    [0x66, 0xb8, 0x10, 0x00], // ff1e: mov ax, 0x10  (32-bit code from here) the data segment
    [0x8e, 0xd8], // ff22: mov ds, ax
    [0x8e, 0xd0], // ff24: mov ss, ax
    [0xb8, ...le32(ramBytes - 0x1000)], // ff26: mov eax, TOP  the top page of RAM
    [0xfe, 0x00], // ff2b: inc byte [eax]  a write: the page is dirty, or faults in on the destination
    [0x2d, ...le32(0x1000)], // ff2d: sub eax, 0x1000  the 4 KiB page below
    [0x3d, ...le32(0x100000)], // ff32: cmp eax, 0x100000  1 MiB: below it, the legacy ROM and video areas
    [0x73, 0xf2], // ff37: jae 0xff2b      at or above it: the next page down
    [0xeb, 0xeb], // ff39: jmp 0xff26      below it: from the top again, forever
  ].flat();
  const gdt = [
    [0, 0, 0, 0, 0, 0, 0, 0], // ff40: the null descriptor
    // Each already marked accessed: the CPU would otherwise write that bit into this ROM (KVM then stalls).
    [0xff, 0xff, 0, 0, 0, 0x9b, 0xcf, 0], // ff48: selector 0x08, code: base 0, limit 4 GiB, 32-bit, execute/read
    [0xff, 0xff, 0, 0, 0, 0x93, 0xcf, 0], // ff50: selector 0x10, data: base 0, limit 4 GiB, read/write
    [23, 0, ...le32(0xffffff40)], // ff58: the GDT register's image: limit 23 (three descriptors), base
  ].flat();
  const image = new Uint8Array(0x10000);
  image.set(code, 0xff00);
  image.set(gdt, 0xff40);
  image.set([0xe9, 0x0d, 0xff], 0xfff0); // fff0: jmp 0xff00  the reset vector (rel16: 0xff00 - 0xfff3)
  return image;
}

/**
 * The launcher, in a process of its own that --migrate started: it makes itself die with the probe,
 * installs the seccomp filters it was given, and becomes QEMU (execve), so QEMU runs under them from
 * its first instruction. Only a process whose parent is the probe that named itself acts as one.
 */
export function launch(argv: string[]) {
  K.loadSys(); // errno, for the answers below
  const c = calls();
  if (argv[0] === WATCHDOG) return watch(c);
  const parent = process.env[LAUNCH];
  const fail = (why: string) => {
    console.error(`postcopy-probe: ${why}`);
    process.exit(127);
  };
  if (String(c.getppid()) !== parent) return fail("not started by a probe's --migrate");
  c.prctl(PR_SET_PDEATHSIG, SIGKILL, null, 0, 0);
  if (String(c.getppid()) !== parent) return fail("the probe is gone");
  // Everything execve() reads is made before the filters go on: nothing after them but the two calls.
  const strings = argv.map(utf8z);
  const env = Object.entries(process.env)
    .filter(([k]) => ![LAUNCH, FILTERS, NO_NEW_PRIVS].includes(k))
    .map(([k, v]) => utf8z(`${k}=${v}`));
  const pointers = (list: Uint8Array[]) => new BigUint64Array([...list.map((s) => BigInt(K.addressOf(s))), 0n]);
  const [args, envp] = [pointers(strings), pointers(env)];
  // The filters came in the environment as each program's bytes (struct sock_filter[]), base64, oldest first.
  const programs = (process.env[FILTERS] || null)?.split(",").map((b64) => {
    const bytes = Uint8Array.from(atob(b64), (ch) => ch.charCodeAt(0));
    return { bytes, prog: new BigUint64Array([BigInt(bytes.length / 8), BigInt(K.addressOf(bytes))]) };
  });
  if (process.env[NO_NEW_PRIVS] === "1" && c.prctl(PR_SET_NO_NEW_PRIVS, 1, null, 0, 0) !== 0)
    return fail("PR_SET_NO_NEW_PRIVS was refused");
  for (const { prog } of programs ?? [])
    if (c.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, prog, 0, 0) !== 0) return fail("a seccomp filter was refused");
  // The kernel reads these buffers by address: `held` keeps them alive until execve() replaces the process.
  held.push(strings, env, args, envp, programs);
  const r = K.answer(c.execve(strings[0], args, envp));
  fail(`cannot run ${argv[0]}: ${K.errnoName(r.errno)}`);
}
/**
 * The watchdog, a process of the probe's own started before anything it watches: its stdin is a pipe only the probe
 * writes, which closes when the probe ends, however it ends (SIGKILL too). The probe tells it the migration's
 * directory, then each QEMU as it starts (its pid and start time: a pidfd is opened at once, and kept only while the
 * pid is still that process). At the end of the stream it kills each QEMU through its pidfd, even one a secure exec
 * (a file capability) freed of its parent-death signal, and removes the directory.
 */
async function watch(c: ReturnType<typeof calls>) {
  const [pidfds, dirs] = [[] as number[], [] as string[]];
  let text = "";
  const told = (line: string) => {
    const [what, value, since] = line.split(" ");
    const dir = what === "dir" ? decodeURIComponent(value) : "";
    if (dir.split("/").at(-1)?.startsWith(DIR_PREFIX)) dirs.push(dir);
    if (what !== "pid") return;
    const fd = Number(c.syscall(NR_PIDFD_OPEN, Number(value), 0, 0, 0));
    if (fd >= 0 && startTime(value) === since) pidfds.push(fd);
  };
  for await (const chunk of Bun.stdin.stream()) {
    text += new TextDecoder().decode(chunk);
    const lines = text.split("\n");
    text = lines.pop() ?? "";
    lines.forEach(told);
  }
  for (const fd of pidfds) c.syscall(NR_PIDFD_SEND_SIGNAL, fd, SIGKILL, 0, 0);
  for (const dir of dirs) rmSync(dir, { recursive: true, force: true });
}
/** A process's start time (/proc/PID/stat, field 22, after its name): with its pid, it names one process. */
const startTime = (pid: number | string) => {
  const stat = K.loadSys().readText(`/proc/${pid}/stat`) ?? "";
  return stat.slice(stat.lastIndexOf(")") + 2).split(" ")[19] ?? null;
};
/**
 * Starts the watchdog (as this process's own user, in a group of its own, not to die with it), before the directory
 * and the QEMUs it is then told of; null on a kernel without pidfds (before 5.3): the QEMUs then die with the probe
 * by their parent-death signal only.
 */
function watchdog() {
  const probe = Number(calls().syscall(NR_PIDFD_OPEN, process.pid, 0, 0, 0));
  if (probe < 0) return null;
  K.loadSys().close(probe);
  // The probe's launch variable routes its main() here (its value is no parent's pid: no launcher would act on it).
  const env = { ...process.env, ...SELF_ENV, [LAUNCH]: WATCHDOG };
  const dog = Bun.spawn([...self(), WATCHDOG], { env, stdio: ["pipe", "ignore", "ignore"], detached: true, cwd: "/" });
  const tell = (line: string) => {
    (dog.stdin as { write: (s: string) => void; flush: () => void }).write(`${line}\n`);
    (dog.stdin as { flush: () => void }).flush();
  };
  return { process: dog, tell };
}
/** A NUL-terminated UTF-8 copy of a string: a path or an environment variable as the kernel takes it. */
const utf8z = (text: string) => new TextEncoder().encode(`${text}\0`);
/** A filter as the kernel takes it (struct sock_filter[]: u16 code, u8 jt, u8 jf, u32 k), in base64. */
function encoded(filter: T.Insn[]) {
  const bytes = new Uint8Array(8 * filter.length);
  const view = new DataView(bytes.buffer);
  filter.forEach(({ code, jt, jf, k }, i) => {
    view.setUint16(8 * i, code, true);
    view.setUint8(8 * i + 2, jt);
    view.setUint8(8 * i + 3, jf);
    view.setUint32(8 * i + 4, k >>> 0, true);
  });
  return btoa(String.fromCharCode(...bytes));
}
const held: unknown[] = [];

type Reply = Record<string, unknown>;
/** A QMP monitor: a command and its reply (null when the monitor closed or the time ran out), and the events seen. */
type Monitor = { cmd: (execute: string, args?: object) => Promise<Reply | null>; events: Reply[]; close: () => void };

/** Connects to a QEMU's QMP socket, retrying while it starts, until `deadline` or `gone()`; negotiated, or null. */
async function monitor(path: string, deadline: number, gone: () => boolean): Promise<Monitor | null> {
  while (Date.now() < deadline && !gone()) {
    const m = await connect(path, deadline).catch(() => null);
    if (m && (await m.cmd("qmp_capabilities"))?.return) return m;
    m?.close();
    await Bun.sleep(POLL_MS);
  }
  return null;
}
/** One connection: lines in, each a reply (to the oldest command waiting) or an event; anything else left out. */
async function connect(path: string, deadline: number): Promise<Monitor> {
  const waiting: Array<(r: Reply | null) => void> = [];
  const events: Reply[] = [];
  let [text, closed] = ["", false];
  const ended = () => {
    closed = true;
    for (const w of waiting.splice(0)) w(null);
  };
  const socket = await Bun.connect({
    unix: path,
    socket: {
      data(s, bytes) {
        text += K.latin1(bytes);
        const lines = text.split("\n");
        text = lines.pop()!;
        if (text.length > LINE_MAX) s.end();
        for (const line of lines) {
          const value = parsed(line);
          if (value && "event" in value) events.push(value);
          else if (value && ("return" in value || "error" in value)) waiting.shift()?.(value);
        }
      },
      close: ended,
      error: ended,
    },
  });
  const cmd = (execute: string, args?: object) =>
    new Promise<Reply | null>((resolve) => {
      if (closed) return resolve(null);
      const timer = setTimeout(() => resolve(null), Math.max(deadline - Date.now(), 0));
      waiting.push((r) => {
        clearTimeout(timer);
        resolve(r);
      });
      socket.write(`${JSON.stringify(args ? { execute, arguments: args } : { execute })}\n`);
    });
  return { cmd, events, close: () => socket.end() };
}
/** A line of JSON as an object, or null for anything else. */
function parsed(line: string): Reply | null {
  try {
    const value = JSON.parse(line);
    return value && typeof value === "object" && !Array.isArray(value) ? value : null;
  } catch {
    return null;
  }
}
/** Whether the guest wrote the page at 1 MiB within the time: its first pass over its RAM is then done. */
async function swept(src: Monitor, deadline: number) {
  while (Date.now() < deadline) {
    const reply = await src.cmd("human-monitor-command", { "command-line": "xp /1xb 0x100000" });
    const byte = typeof reply?.return === "string" ? reply.return.match(/: 0x([0-9a-f]{2})/)?.[1] : undefined;
    if (byte === undefined) return false;
    if (byte !== "00") return true;
    await Bun.sleep(POLL_MS);
  }
  return false;
}
/** QEMU's words in an error reply, made safe to show. */
const said = (r: Reply | null) => sanitize(String((r?.error as { desc?: unknown } | undefined)?.desc ?? "no reply"));
const num = (v: unknown) => (typeof v === "number" && Number.isFinite(v) ? v : null);

/** stderr is read up to this: QEMU says why it stopped in a line or two. */
const STDERR_MAX = 1 << 14;

/**
 * Migrates a guest from a source QEMU to a destination QEMU over a unix socket in a private directory,
 * switching to postcopy at once, within `plan.ms`. Both QEMUs run in process groups of their own and are
 * killed, and the directory removed, on every path (signals too).
 */
export async function migrate(sys: Sys, plan: Plan): Promise<T.Migration> {
  const deadline = Date.now() + (plan.ms ?? MIGRATE_MS);
  const kvm = sys.open("/dev/kvm", K.O_RDWR | K.O_CLOEXEC);
  if (kvm.ret >= 0) sys.close(kvm.ret);
  const result = blank(plan.qemu, plan.ramMiB, plan.parallel, kvm.ret >= 0 ? "kvm" : "tcg");
  // Filters go on without NoNewPrivs only where the process had none and this one may (CAP_SYS_ADMIN).
  const admin = capBit(field(sys.readText("/proc/self/status"), "CapEff"), CAP_SYS_ADMIN) === true;
  const children: Array<ReturnType<typeof Bun.spawn>> = [];
  let dir = "";
  const dog = watchdog();
  const stderr = ["", ""];
  const cleanup = () => {
    for (const child of children) kill(child);
    if (dir) rmSync(dir, { recursive: true, force: true });
    (dog?.process.stdin as { end: () => void } | undefined)?.end(); // the watchdog then ends too
  };
  const onSignal = (signal: NodeJS.Signals) => {
    cleanup();
    process.kill(process.pid, signal);
  };
  const signals = ["SIGINT", "SIGTERM", "SIGHUP"] as const;
  for (const s of signals) process.once(s, onSignal);
  try {
    dir = mkdtempSync(`${process.env.TMPDIR || "/tmp"}/${DIR_PREFIX}`);
    dog?.tell(`dir ${encodeURIComponent(dir)}`); // one word, whatever $TMPDIR holds
    writeFileSync(`${dir}/firmware.bin`, firmware(plan.ramMiB << 20));
    const start = (side: "src" | "dst") => {
      const args = qemuArgs(plan, result.accel, dir, side);
      // The filters travel in the launcher's environment: no file a process of that user could change meanwhile.
      const filters = side === "dst" && plan.filters?.length ? { [FILTERS]: plan.filters.map(encoded).join(",") } : {};
      const nnp = plan.noNewPrivs || (filters[FILTERS] && !admin) ? { [NO_NEW_PRIVS]: "1" } : {};
      const env = { ...process.env, ...SELF_ENV, [LAUNCH]: String(process.pid), ...filters, ...nnp };
      // The RAM's directory, when there is one, is each QEMU's fd 3.
      const stdio = ["ignore", "ignore", "pipe", ...(plan.memDir === undefined ? [] : [plan.memDir])];
      const child = Bun.spawn([...self(), plan.qemu, ...args], {
        env,
        stdio: stdio as never,
        detached: true,
        cwd: "/",
      });
      children.push(child);
      dog?.tell(`pid ${child.pid} ${startTime(child.pid)}`);
      void readStderr(
        child.stderr as unknown as ReadableStream<Uint8Array>,
        (t) => (stderr[side === "src" ? 0 : 1] = t),
      );
      return child;
    };
    const [dstChild, srcChild] = [start("dst"), start("src")];
    const gone = (c: ReturnType<typeof Bun.spawn>) => c.exitCode !== null || c.signalCode !== null;
    const [dst, src] = [
      await monitor(`${dir}/dst.qmp`, deadline, () => gone(dstChild)),
      await monitor(`${dir}/src.qmp`, deadline, () => gone(srcChild)),
    ];
    // What a QEMU said last on stderr, without its warnings (a CPU feature the host lacks, ...).
    const lines = (i: number) => stderr[i].split("\n").filter((l) => l.trim() && !/warning:/.test(l));
    const words = (i: number) => sanitize(lines(i).slice(-2).join(": "));
    if (!dst || !src) {
      const which = dst ? 0 : 1;
      const child = [srcChild, dstChild][which];
      const how = child.signalCode ? ` (killed by ${child.signalCode})` : "";
      const said = words(which) ? `: ${words(which)}` : "";
      result.why = `the ${["source", "destination"][which]} QEMU did not start${how}${said}`;
      return result;
    }
    // The guest has written every page once (the last, at 1 MiB, is written last): none is a zero page now,
    // so each must travel, and after the switch most are not there yet when the guest touches them.
    if (!(await swept(src, deadline))) {
      result.why = `the guest did not run${words(0) ? `: ${words(0)}` : ""}`;
      return result;
    }
    const caps = (names: string[]) => ({ capabilities: names.map((capability) => ({ capability, state: true })) });
    const multifd = plan.parallel ? ["multifd"] : [];
    const refused = await dst.cmd("migrate-set-capabilities", caps(["postcopy-ram", "postcopy-blocktime", ...multifd]));
    if (!refused?.return) {
      // No reply: the destination died asking the kernel (a seccomp filter that kills), or hangs.
      const died = !refused && (await within(dstChild.exited, 1000));
      const how = died ? `the destination died (${dstChild.signalCode ?? `exit ${dstChild.exitCode}`})` : null;
      const why = refused
        ? `the destination refused postcopy-ram: ${said(refused)}`
        : (how ?? "the destination did not answer");
      return { ...result, ok: refused || died ? false : null, why: words(1) ? `${why}: ${words(1)}` : why };
    }
    const channels = { "multifd-channels": plan.parallel };
    for (const m of plan.parallel ? [dst, src] : []) await m.cmd("migrate-set-parameters", channels);
    // Pages not asked for come slowly, before the switch and after it: most the guest touches, it must ask for.
    const rate = { "max-bandwidth": BYTES_PER_S, "max-postcopy-bandwidth": BYTES_PER_S };
    await src.cmd("migrate-set-parameters", rate);
    const uri = `unix:${dir}/migration.sock`;
    const incoming = await dst.cmd("migrate-incoming", { uri });
    const sourceCaps = await src.cmd("migrate-set-capabilities", caps(["postcopy-ram", "events", ...multifd]));
    const started = sourceCaps?.error ? sourceCaps : await src.cmd("migrate", { uri });
    if (!incoming?.return || !started?.return) {
      result.why = `the migration did not start: ${said(incoming?.return ? started : incoming)}`;
      return result;
    }
    // Postcopy as soon as the migration is active: the guest's pages then come on demand.
    let [status, switched] = ["setup", false];
    while (!ENDS.includes(status) && Date.now() < deadline) {
      const info = (await src.cmd("query-migrate"))?.return as Reply | undefined;
      status = typeof info?.status === "string" ? info.status : gone(dstChild) || gone(srcChild) ? "failed" : status;
      if (result.statuses.at(-1) !== status) result.statuses.push(status);
      if (status === "active" && !switched) switched = !!(await src.cmd("migrate-start-postcopy"))?.return;
      if (!ENDS.includes(status)) await Bun.sleep(POLL_MS);
    }
    // The events say each status the source went through, polls may miss a short one.
    const seen = src.events.filter((e) => e.event === "MIGRATION").map((e) => (e.data as Reply)?.status);
    const statuses = seen.filter((s): s is string => typeof s === "string");
    if (statuses.length) result.statuses = statuses.filter((s, i) => statuses[i - 1] !== s);
    const info = ((await src.cmd("query-migrate"))?.return ?? {}) as Reply;
    const ram = (info.ram ?? {}) as Reply;
    Object.assign(result, {
      totalMs: num(info["total-time"]),
      downtimeMs: num(info.downtime),
      pagesRequested: num(ram["postcopy-requests"]),
    });
    const there = ((await dst.cmd("query-migrate"))?.return ?? {}) as Reply;
    const vcpu = there["postcopy-vcpu-blocktime"];
    result.blocktimeMs = num(there["postcopy-blocktime"]);
    result.vcpuBlocktimeMs = Array.isArray(vcpu) ? vcpu.map((v) => num(v) ?? 0) : null;
    const running = ((await dst.cmd("query-status"))?.return as Reply | undefined)?.status;
    const ended = async () => ((await within(dstChild.exited, 1000)) ? "gone" : "unresponsive");
    return judged(result, status, typeof running === "string" ? running : await ended(), words(1) || words(0));
  } catch (e) {
    // A TMPDIR read-only or full, a spawn refused (a device cgroup, a limit): no migration, and the report stays.
    return { ...result, ok: null, why: `it could not be set up here: ${sanitize((e as Error).message)}` };
  } finally {
    for (const s of signals) process.off(s, onSignal);
    cleanup();
    await Promise.all([...children, ...(dog ? [dog.process] : [])].map((c) => within(c.exited, 1000)));
  }
}

/** Each QEMU's command line: the same machine, accelerator and RAM on both sides; the destination waits. */
function qemuArgs(plan: Plan, accel: string, dir: string, side: "src" | "dst") {
  const size = plan.ramMiB << 20;
  const backend =
    plan.memDir !== undefined
      ? { "qom-type": "memory-backend-file", "mem-path": "/proc/self/fd/3", share: !!plan.shared }
      : plan.shared
        ? { "qom-type": "memory-backend-memfd" }
        : { "qom-type": "memory-backend-ram" };
  return [
    ...["-machine", "pc,memory-backend=ram", "-accel", accel, "-m", `${plan.ramMiB}M`],
    ...["-object", JSON.stringify({ ...backend, id: "ram", size })],
    ...["-nodefaults", "-no-user-config", "-display", "none"],
    ...["-bios", `${dir}/firmware.bin`, "-qmp", `unix:${dir}/${side}.qmp,server=on,wait=off`],
    ...(side === "dst" ? ["-incoming", "defer", ...(plan.sandbox ?? [])] : []),
  ];
}

/** A child's stderr as it comes, up to STDERR_MAX. */
async function readStderr(stream: ReadableStream<Uint8Array>, set: (text: string) => void) {
  let text = "";
  try {
    for await (const chunk of stream) {
      if (text.length >= STDERR_MAX) continue; // read on, so QEMU never blocks on a full pipe
      text += K.latin1(chunk);
      set(text.slice(0, STDERR_MAX));
    }
  } catch {
    // the pipe went with the process
  }
}
/** Kills a QEMU's whole process group. */
function kill(child: ReturnType<typeof Bun.spawn>) {
  try {
    process.kill(-child.pid, "SIGKILL");
  } catch {
    // already gone
  }
}

/** The answer from how the migration ended: yes only for a postcopy migration that completed with pages requested. */
function judged(m: T.Migration, status: string, destination: string, words: string): T.Migration {
  const postcopy = m.statuses.includes("postcopy-active");
  const qemuSaid = words ? `: ${words}` : "";
  if (!ENDS.includes(status)) return { ...m, why: `it did not end within the bound (status ${status})` };
  if (status !== "completed") return { ...m, ok: false, why: `the source ended ${status}${qemuSaid}` };
  if (!postcopy) return { ...m, why: "it completed before postcopy began: no page came on demand" };
  if (destination !== "running") return { ...m, ok: false, why: `the destination ends ${destination}${qemuSaid}` };
  if (!m.pagesRequested) return { ...m, why: "postcopy completed, but the destination requested no page" };
  return { ...m, ok: true };
}

/** The --migrate check: what the migration showed, in one line. */
export function checkMigration(m: T.Migration): T.Check {
  const head = { id: "migration", title: "a real postcopy migration between two QEMUs (--migrate)" };
  const how = `${m.accel.toUpperCase()}, ${m.ramMiB} MiB${m.parallel ? `, ${m.parallel} multifd channels` : ""}`;
  const went = m.statuses.join(" → ") || "no status";
  const figures = [
    m.totalMs !== null ? `${(m.totalMs / 1000).toFixed(1)} s` : null,
    m.downtimeMs !== null ? `downtime ${m.downtimeMs} ms` : null,
    m.pagesRequested !== null ? `${m.pagesRequested} pages requested` : null,
    m.blocktimeMs !== null ? `vCPU blocktime ${m.blocktimeMs} ms` : null,
  ].filter(Boolean);
  const detail = `${how}: ${went}${figures.length ? `, ${figures.join(", ")}` : ""}${m.why ? `; ${m.why}` : ""}`;
  return { ...head, status: m.ok ? "pass" : m.ok === false ? "fail" : "skip", detail };
}

/**
 * --migrate's answer, a real judge beside the probe: the migration decides postcopy-ram (with --parallel,
 * postcopy-multifd), in the context the probe answers for (this process: --user's and --pid's child is
 * already that user, in those cgroups), with that QEMU and --pid's RAM kind and seccomp filters.
 */
export async function migrationAnswer(
  sys: Sys,
  opts: T.Options,
  qemu: T.Qemu | null,
  context?: T.Context,
): Promise<T.RealAnswer> {
  const plan = planOf(sys, opts, qemu, context);
  const unrun = blank(qemu?.path ?? "", opts.migrateMiB, opts.parallel);
  const m = typeof plan === "string" ? { ...unrun, why: plan } : await migrate(sys, plan);
  const multifd = opts.parallel ? ` with ${opts.parallel} multifd channels` : "";
  const whose = `a real migration${multifd}, QEMU ${qemu?.version ?? "of no known version"}`;
  const unanswered: T.Unjudged | undefined = m.ok === null ? [`--migrate: ${m.why}`, SETTLE] : undefined;
  const decides = { [opts.parallel ? "postcopy-multifd" : "postcopy-ram"]: m.ok };
  return { whose, check: checkMigration(m), decides, unanswered, json: { migration: m } };
}
const SETTLE = "see the migration check's detail; run --migrate again once it is mended";

/** The migration --migrate asks for, or why it cannot run here (the probe then cannot answer: exit 2). */
function planOf(sys: Sys, opts: T.Options, qemu: T.Qemu | null, context?: T.Context): Plan | string {
  if (K.arch?.name !== "x86_64") return `its guest is x86 code, and this is ${K.arch?.name}`;
  if (!qemu?.path) return qemu?.error ?? "no QEMU found";
  const f = context?.copy;
  // A tenant's binary is never run: only the host's own QEMU, the one the process runs, in the host's namespace.
  if (f?.exe?.endsWith(" (deleted)"))
    return [
      `${qemu.path}, which process ${f.pid} runs, was replaced or removed since it started (an upgrade?):`,
      "the probe runs only the file the process runs",
    ].join(" ");
  if (f && (!qemu.grantable || f.exe !== qemu.path)) {
    const own = "the host's own QEMU (root's file, in the host's mount namespace)";
    return `${qemu.path}, which process ${f.pid} runs, is not ${own}: the probe does not run it`;
  }
  // Both QEMUs join the process's cgroups: they must fit in what its memory limit leaves, or its own VM may be
  // the one killed.
  const room = f ? headroom(sys) : null;
  const needed = 2 * (opts.migrateMiB + QEMU_OVERHEAD_MIB) * 2 ** 20;
  if (room !== null && room < needed) {
    const [left, two] = [Math.floor(room / 2 ** 20), needed / 2 ** 20];
    const qemus = `two QEMUs of ${opts.migrateMiB} MiB`;
    return `the process's memory cgroup leaves ${left} MiB, and ${qemus} need about ${two} MiB`;
  }
  // A supervisor (USER_NOTIF) or a tracer (TRACE) the process's filters hand userfaultfd to is not the copy's.
  if (context?.facts?.filter?.undecided.length)
    return "the process's seccomp filters hand userfaultfd to a supervisor or a tracer, which a copy of them has not";
  const ram = f?.ram;
  if (ram?.memPath && ram.dir === null)
    return `the directory of its mem-path ${ram.memPath} could not be reached inside the process's root`;
  return {
    ...{ qemu: qemu.path, ramMiB: opts.migrateMiB, parallel: opts.parallel, ms: opts.migrateMs },
    ...{ memDir: ram?.dir ?? undefined, shared: ram?.shared, filters: f?.filters, sandbox: f?.sandbox },
    noNewPrivs: f?.noNewPrivs,
  };
}
/** A migration before it ran, or one that did not. */
const blank = (qemu: string, ramMiB: number, parallel: number, accel: "kvm" | "tcg" = "tcg"): T.Migration => ({
  ...{ ok: null, qemu, accel, ramMiB, parallel, statuses: [], totalMs: null, downtimeMs: null },
  ...{ pagesRequested: null, blocktimeMs: null, vcpuBlocktimeMs: null },
});
/** What a QEMU takes beyond its guest's RAM, about (measured: 40 MiB for 7.2 and 10 with this guest). */
const QEMU_OVERHEAD_MIB = 64;

/**
 * What the memory cgroups this process is in (the child joined the process's v2 one) still let it take, in
 * bytes: the least over each cgroup and every one above it, whose limits count too; null when none has one.
 */
function headroom(sys: Sys) {
  const { cgroupDirs } = require("./pid.ts") as typeof import("./pid.ts");
  const bytes = (path: string) => {
    const text = sys.readText(path)?.trim() ?? "";
    return /^\d+$/.test(text) ? Number(text) : null; // "max": no limit
  };
  const left: number[] = [];
  for (const leaf of cgroupDirs(sys, "self", "memory")) {
    const v2 = sys.readText(`${leaf}/memory.max`) !== null;
    const [limit, used] = v2 ? ["memory.max", "memory.current"] : ["memory.limit_in_bytes", "memory.usage_in_bytes"];
    // Up to the hierarchy's root, which has no such file (v2) or no limit (v1).
    for (let dir = leaf; sys.readText(`${dir}/${limit}`) !== null; dir = dir.slice(0, dir.lastIndexOf("/"))) {
      const [max, now] = [bytes(`${dir}/${limit}`), bytes(`${dir}/${used}`)];
      if (max !== null && now !== null) left.push(max - now);
    }
  }
  return left.length ? Math.min(...left) : null;
}
