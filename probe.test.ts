/**
 * Tests for postcopy-probe. The real kernel first (root, another uid through setpriv, seccomp filters
 * and private mount namespaces built in a child, a devices cgroup made and removed); a fake Sys only
 * for what this machine cannot produce (ENOSYS, EINVAL from UFFDIO_API, missing ioctl bits), and fake
 * QEMU scripts for what a real QEMU would never print.
 */
import { afterAll, describe, expect, test } from "bun:test";
import {
  chmodSync,
  chownSync,
  copyFileSync,
  existsSync,
  linkSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  realpathSync,
  rmdirSync,
  rmSync,
  statSync,
  symlinkSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { basename, dirname } from "node:path";
import { runInContext } from "./context.ts";
import type { R, Sys } from "./ffi.ts";
import * as K from "./ffi.ts";
import { onFuse, openat2, CAUSES as PID_CAUSES, walkIn } from "./pid.ts";
import type { Capability, CauseId, Check, Evidence, Facts, Report, Seen } from "./probe.ts";
import {
  CAPABILITIES,
  CAUSE_IDS,
  decodeFeatures,
  diagnose,
  errorDocument,
  field,
  PATTERN_NUL,
  parseArgs,
  probe,
  readFacts,
  renderHuman,
  renderJson,
  VERSION,
} from "./probe.ts";
import type { Qemu } from "./qemu.ts";
import {
  askQemu,
  identify,
  multifdWith,
  pipe,
  poll,
  CAUSES as QEMU_CAUSES,
  qemuAnswer,
  setcap,
  versionIn,
} from "./qemu.ts";
import { actionName, combined, run, verdicts } from "./seccomp.ts";
import { renderPrometheus } from "./textfile.ts";
import { configChecks, CAUSES as VM_CAUSES } from "./vm.ts";

const sys = K.loadSys();
const facts = readFacts(sys);
const { help: _, version: __, ...opts } = parseArgs([]);
const isRoot = process.getuid!() === 0;
const unprivileged = readFileSync("/proc/sys/vm/unprivileged_userfaultfd", "utf8").trim();
const realQemu = Bun.which("qemu-system-x86_64");
/** Debian trixie's QEMU 10, when ../shared/qemu10 installed it. */
const qemu10Wrapper = `${import.meta.dir}/../shared/qemu10/qemu10`;
const qemu10 = existsSync("/srv/qemu10/usr/bin/qemu-system-x86_64") && existsSync(qemu10Wrapper) ? qemu10Wrapper : null;
const fail = (name: string): R => ({ ret: -1, errno: K.errnoOf(name) });
const statuses = (r: Report) => Object.fromEntries(r.checks.map((c) => [c.id, c.status]));
const check = (r: Report, id: string) => r.checks.find((c) => c.id === id)!;
const causes = (r: Report) => r.diagnosis.map((d) => d.cause);
/** The note that blocks nothing, and shows wherever no huge pages are reserved. */
const NOTE = "hugepages-not-reserved";
/** What each route answered, as uffd-open found it. */
const routesOf = (r: Report) => check(r, "uffd-open").routes as Record<string, string>;
/** Each cause with what it blocks, as plain strings. */
const blocked = (r: Report) => r.diagnosis.map((d): [string, string[]] => [d.cause, d.blocks]);
/** diagnose() from facts (evidence read as nothing unless given), checks holding uffd-open's routes, and the rest. */
const diagnoseOf = (
  f: Facts & Partial<Evidence>,
  checks: Check[],
  failing: Capability[] = [...CAPABILITIES],
  qemu: Qemu | null = null,
  vm: Check[] = [],
  required: Capability[] = ["postcopy-ram"],
) => {
  const a = checks.find((c) => c.id === "uffd-open")!.routes!;
  // The rows a QEMU read adds, and --pid's: their gates read what only they set.
  const more = { ...(qemu?.version ? QEMU_CAUSES : {}), ...PID_CAUSES, ...VM_CAUSES };
  const seen = { f: { sysctlSource: null, ...f }, a, checks: [...checks, ...vm], failing, qemu, required };
  return diagnose(seen, more);
};
const QEMU_CAPS = [
  ...["postcopy-ram", "postcopy-hugetlbfs", "postcopy-shmem", "background-snapshot", "postcopy-blocktime"],
  "postcopy-multifd",
];

/**
 * What a leak by the probe would raise: open fds, mappings of the shapes the probe makes (one
 * read-write anonymous page, a memfd, a huge page) and threads named like this one (a pthread
 * inherits the name; Bun's own threads come and go, so only a rise counts).
 */
function count() {
  const isProbeMapping = (line: string) => {
    const [range, perms, , , inode, path = ""] = line.split(/\s+/);
    const [start, end] = range.split("-").map((x) => Number.parseInt(x, 16));
    const page = perms === "rw-p" && inode === "0" && !path && end - start === facts.pageSize;
    return page || /memfd:postcopy-probe|anon_hugepage/.test(line);
  };
  const name = readFileSync("/proc/self/comm", "utf8");
  return {
    fds: readdirSync("/proc/self/fd").length,
    mappings: readFileSync("/proc/self/maps", "utf8").split("\n").filter(isProbeMapping).length,
    threads: readdirSync("/proc/self/task").filter((t) => readFileSync(`/proc/self/task/${t}/comm`, "utf8") === name)
      .length,
  };
}
const noLeak = (before: ReturnType<typeof count>, after: ReturnType<typeof count>) => {
  expect({ fds: after.fds, mappings: after.mappings }).toEqual({ fds: before.fds, mappings: before.mappings });
  expect(after.threads).toBeLessThanOrEqual(before.threads);
};

/** A process's command line, or "" once it is gone. */
/** A file of /proc/PID, or "" once the process is gone (it may go between the listing and the read). */
const procOf = (pid: string, name: string) => {
  try {
    return readFileSync(`/proc/${pid}/${name}`, "latin1");
  } catch {
    return "";
  }
};
const cmdlineOf = (pid: string) => procOf(pid, "cmdline");
const pids = () => readdirSync("/proc").filter((p) => /^\d+$/.test(p));
/** A world-readable directory for this run: bun, the probe, fake QEMUs; uid 65534 can reach it. */
const world = mkdtempSync(`${tmpdir()}/postcopy-probe-test-`);
chmodSync(world, 0o755);
/** The package's files, as npm packs them: the probe and each option's file. */
const shipped: string[] = JSON.parse(readFileSync(`${import.meta.dir}/package.json`, "utf8")).files;
for (const file of [...shipped.filter((f) => f.endsWith(".ts")), "package.json"])
  copyFileSync(`${import.meta.dir}/${file}`, `${world}/${file}`);
try {
  linkSync(process.execPath, `${world}/bun`);
} catch {
  copyFileSync(process.execPath, `${world}/bun`); // another filesystem: a copy keeps the mode
}
chmodSync(`${world}/bun`, 0o755);
afterAll(() => rmSync(world, { recursive: true, force: true }));

/** A directory holding a script named qemu-system-x86_64 with `body`, to put first on PATH. */
function qemuDir(name: string, body: string) {
  const dir = `${world}/${name}`;
  mkdirSync(dir, { recursive: true, mode: 0o755 });
  writeFileSync(`${dir}/qemu-system-x86_64`, `#!/bin/sh\n${body}\n`, { mode: 0o755 });
  return dir;
}
/** A QEMU that only holds its version in its bytes, as a binary does: what the probe reads, never runs. */
function qemuOf(version: string) {
  const dir = `${world}/qemu-${version}`;
  mkdirSync(dir, { recursive: true, mode: 0o755 });
  writeFileSync(`${dir}/qemu-system-x86_64`, `\x7fELF (fake)\0QEMU emulator version ${version} (fake)\0`, {
    mode: 0o755,
  });
  return dir;
}
const [QEMU7, QEMU10] = [qemuOf("7.2.0"), qemuOf("10.0.0")];
const NO_QEMU = "/nonexistent";
const pathWith = (dir: string) => `${dir}:/usr/local/bin:/usr/bin:/bin`;

type Run = { code: number | null; stdout: string; stderr: string; report: Report };
/** Runs the CLI as a child: optionally as uid 65534, behind a prefix (unshare, prlimit), with a PATH. */
function cli(
  args: string[],
  o: { nobody?: boolean; path?: string; prefix?: string[]; env?: Record<string, string> } = {},
): Run {
  const nobody = o.nobody ? ["/usr/bin/setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"] : [];
  const env = { ...process.env, NO_COLOR: "1", PATH: o.path ?? process.env.PATH ?? "", ...o.env };
  const run = Bun.spawnSync([...(o.prefix ?? []), ...nobody, `${world}/bun`, `${world}/probe.ts`, ...args], {
    env,
    cwd: world,
  });
  const stdout = run.stdout.toString();
  let report = {} as Report;
  try {
    report = JSON.parse(stdout);
  } catch {
    // not a JSON run
  }
  return { code: run.exitCode, stdout, stderr: run.stderr.toString(), report };
}

/** What `argv` and its children opened, as strace logs it (open, openat, openat2), and its stdout. */
function traceOpens(argv: string[]) {
  const log = `${world}/opens-${Math.random().toString(36).slice(2)}.strace`;
  const run = Bun.spawnSync([Bun.which("strace")!, "-f", "-qq", "-e", "trace=open,openat,openat2", "-o", log, ...argv]);
  return { stdout: run.stdout.toString(), opens: readFileSync(log, "utf8").split("\n") };
}

/** x86_64's seccomp filter, as struct sock_filter rows [code, jt, jf, k]: userfaultfd(2) -> ERRNO(`errno`), all else ALLOW. */
const userfaultfdRefused = (errno: string) => [
  [0x20, 0, 0, 4],
  [0x15, 0, 3, 0xc000003e],
  [0x20, 0, 0, 0],
  [0x15, 0, 1, 323],
  [0x06, 0, 0, 0x00050000 | K.errnoOf(errno)],
  [0x06, 0, 0, 0x7fff0000],
];
/** A script that installs a seccomp filter (as a container runtime does), then runs main(); by default one failing userfaultfd(2) with `errno`. */
function seccompScript(errno: "EPERM" | "ENOSYS", insns = userfaultfdRefused(errno), name = `seccomp-${errno}`) {
  const script = `${world}/${name}.ts`;
  writeFileSync(
    script,
    `import { ptr } from "bun:ffi";
    import { FFIType as T, loadSys, openLibc } from "./ffi.ts";
    import { main } from "./probe.ts";
    loadSys();
    const { prctl } = openLibc({ prctl: { args: [T.i32, T.u64, T.ptr, T.u64, T.u64], returns: T.i32 } });
    const [PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP, SECCOMP_MODE_FILTER] = [38, 22, 2]; // linux/prctl.h, seccomp.h
    const insns = ${JSON.stringify(insns)};
    const bytes = new Uint8Array(8 * insns.length);
    const view = new DataView(bytes.buffer);
    insns.forEach(([code, jt, jf, k], i) => {
      view.setUint16(8 * i, code, true); view.setUint8(8 * i + 2, jt); view.setUint8(8 * i + 3, jf); view.setUint32(8 * i + 4, k, true);
    });
    const prog = new BigUint64Array([BigInt(insns.length), BigInt(ptr(bytes))]);
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, null, 0, 0) || prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, prog, 0, 0)) throw new Error("seccomp");
    bytes.fill(0, 0, 0); // the kernel read the filter during prctl: keep it referenced until then
    main(process.argv.slice(2));`,
  );
  return script;
}
/** The CLI under a seccomp filter: the child installs it, then runs the probe. */
function underSeccomp(
  errno: "EPERM" | "ENOSYS",
  args: string[],
  o: Parameters<typeof cli>[1] & { insns?: number[][]; name?: string } = {},
) {
  const nobody = o.nobody ? ["/usr/bin/setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"] : [];
  const env = { ...process.env, NO_COLOR: "1", PATH: o.path ?? process.env.PATH ?? "" };
  const script = seccompScript(errno, o.insns, o.name);
  const run = Bun.spawnSync([...nobody, `${world}/bun`, script, ...args], { env, cwd: world });
  return { code: run.exitCode, report: JSON.parse(run.stdout.toString()) as Report };
}
/** A shell script run in a private mount namespace: what it mounts is gone with it, the host is untouched. */
const inNamespace = (script: string) => ["/usr/bin/unshare", "-m", "--propagation", "private", "/bin/sh", "-c", script];
/** A tmpfs of our own in the namespace holding a device node `mode` for the userfaultfd minor, bound over /dev/userfaultfd. */
function deviceOpenTo(mode: string) {
  const dir = `${world}/dev-${mode}`;
  mkdirSync(dir, { recursive: true });
  const node = `mknod -m ${mode} ${dir}/ufd c 10 ${facts.miscMinor}`;
  return inNamespace(
    `mount -t tmpfs none ${dir} && ${node} && mount --bind ${dir}/ufd /dev/userfaultfd && exec "$@"`,
  ).concat(["sh"]);
}

/** Where QEMUs of any user can make their QMP sockets. */
const sockets = `${world}/sockets`;
mkdirSync(sockets, { mode: 0o1777 });
chmodSync(sockets, 0o1777);
type Reply = { return?: { status?: string }; error?: { desc: string } };
/** A tiny QMP client on a unix socket: each command's reply, or an error after 3 s. */
async function qmp(path: string) {
  for (let i = 0; i < 100 && !existsSync(path); i++) await Bun.sleep(50);
  const { connect } = await import("node:net");
  const socket = connect(path);
  const waiting: Array<(reply: Reply) => void> = [];
  let buffer = "";
  socket.on("data", (data) => {
    buffer += data.toString();
    for (let at = buffer.indexOf("\n"); at >= 0; at = buffer.indexOf("\n")) {
      const line = JSON.parse(buffer.slice(0, at));
      buffer = buffer.slice(at + 1);
      if ("return" in line || "error" in line) waiting.shift()?.(line);
    }
  });
  // A QEMU that never made its socket fails this test, here: its error never reaches a later one.
  await new Promise((ready, fail) => {
    socket.once("connect", ready);
    socket.once("error", (e) => fail(new Error(`QMP at ${path}: ${e.message}`)));
  });
  socket.on("error", () => socket.destroy());
  const cmd = (execute: string, args?: object) =>
    Promise.race([
      new Promise<Reply>((reply) => {
        waiting.push(reply);
        socket.write(`${JSON.stringify({ execute, arguments: args })}\n`);
      }),
      Bun.sleep(3000).then((): Reply => ({ error: { desc: "no answer" } })),
    ]);
  await cmd("qmp_capabilities");
  return { cmd, close: () => socket.destroy() };
}
const POSTCOPY = { capabilities: [{ capability: "postcopy-ram", state: true }] };
const VM = ["-machine", "pc", "-m", "64", "-nodefaults", "-display", "none"];

/** A real incoming QEMU started behind `prefix` (another user, a namespace, a cgroup), with its QMP socket. */
async function withQemu<T>(
  qemu: string,
  prefix: string[],
  args: string[],
  use: (pid: number, ask: () => Promise<string>) => Promise<T>,
) {
  const socket = `${sockets}/qmp-${Math.random().toString(36).slice(2)}.sock`;
  const child = Bun.spawn(
    [...prefix, qemu, ...VM, "-S", ...args, "-incoming", "defer", "-qmp", `unix:${socket},server=on,wait=off`],
    {
      stdio: ["ignore", "ignore", "ignore"],
    },
  );
  try {
    const monitor = await qmp(socket);
    // The QEMU itself: the newest process whose command line holds our socket (the prefix may be a shell).
    const qemus = pids().filter((p) => cmdlineOf(p).includes(socket) && cmdlineOf(p).split("\0")[0].includes("qemu"));
    const pid = Number(qemus.sort((a, b) => Number(b) - Number(a))[0]);
    const ask = async () => {
      const reply = await monitor.cmd("migrate-set-capabilities", POSTCOPY);
      return reply.error ? `no: ${reply.error.desc}` : "yes";
    };
    try {
      return await use(pid, ask);
    } finally {
      monitor.close();
    }
  } finally {
    // The prefix may have started QEMU as a child of its own (the seccomp one does): QEMU goes by its pid too.
    for (const p of pids()) if (cmdlineOf(p).includes(socket)) process.kill(Number(p), "SIGKILL");
    child.kill("SIGKILL");
    await child.exited;
  }
}

/** A real postcopy migration between two local QEMUs over a unix socket: "completed", or how it ended. */
async function migrate(qemu: string, args: (side: string) => string[]) {
  const dir = mkdtempSync(`${world}/migration-`);
  const start = (side: string, more: string[]) =>
    Bun.spawn([qemu, ...VM, ...args(side), ...more, "-qmp", `unix:${dir}/${side}.sock,server=on,wait=off`], {
      stdio: ["ignore", "ignore", "ignore"],
    });
  const [dst, src] = [start("dst", ["-incoming", "defer"]), start("src", [])];
  try {
    const [d, s] = [await qmp(`${dir}/dst.sock`), await qmp(`${dir}/src.sock`)];
    const refused = (await d.cmd("migrate-set-capabilities", POSTCOPY)).error;
    if (refused) return `refused: ${refused.desc}`;
    await s.cmd("migrate-set-capabilities", POSTCOPY);
    await s.cmd("migrate-set-parameters", { "max-bandwidth": 1 << 20 }); // slow precopy: postcopy takes over
    await d.cmd("migrate-incoming", { uri: `unix:${dir}/migration.sock` });
    await s.cmd("migrate", { uri: `unix:${dir}/migration.sock` });
    // Postcopy can start only once precopy runs; on a loaded host "setup" can last a while.
    const status = async () => ((await s.cmd("query-migrate")).return?.status ?? "") as string;
    for (let i = 0; i < 100 && (await status()) !== "active"; i++) await Bun.sleep(50);
    const unstarted = (await s.cmd("migrate-start-postcopy")).error;
    if (unstarted) return `migrate-start-postcopy: ${unstarted.desc}`;
    for (let i = 0; i < 150; i++) {
      await Bun.sleep(100);
      const now = await status();
      if (["completed", "failed", "postcopy-paused", "cancelled"].includes(now)) return now;
    }
    return `timeout in ${await status()}`;
  } finally {
    for (const q of [src, dst]) q.kill("SIGKILL");
    await Promise.all([src.exited, dst.exited]);
    rmSync(dir, { recursive: true, force: true });
  }
}

/**
 * A stand-in for a QEMU process: a small C program that holds a QEMU's version string (7.2.0, or -DVERSION's; none
 * with -DNO_VERSION), opens each file named after -hold as QEMU holds its RAM file, after -vfork N stays in vfork()
 * while its child sleeps N seconds (a main thread that cannot stop), then waits. Built once, static, so that it runs
 * in a chroot of its own too.
 */
const STAND_IN = `#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#ifndef VERSION
#define VERSION "7.2.0"
#endif
#ifndef NO_VERSION
__attribute__((used)) static const char version[] = "QEMU emulator version " VERSION " (stand-in)";
#endif
int main(int argc, char **argv) {
  for (int i = 1; i + 1 < argc; i++)
    if (!strcmp(argv[i], "-hold")) open(argv[i + 1], O_RDONLY);
    else if (!strcmp(argv[i], "-chroot") && (chroot(argv[i + 1]) || chdir("/"))) return 1;
    else if (!strcmp(argv[i], "-vfork") && vfork() == 0) { sleep(atoi(argv[i + 1])); _exit(0); }
  pause();
  return 0;
}`;
const cc = Bun.which("cc");
/** The stand-in built as `name` in a directory of its own (linked dynamically when `flags` say so): its path. */
function standIn(name: string, flags = ["-static"]) {
  const dir = `${world}/stand-in-${name.replace(/\W+/g, "-")}-${flags.join("").replace(/\W+/g, "")}`;
  mkdirSync(dir, { recursive: true, mode: 0o755 });
  writeFileSync(`${dir}/stand-in.c`, STAND_IN);
  const built = Bun.spawnSync([cc!, "-O2", ...flags, "-o", `${dir}/${name}`, `${dir}/stand-in.c`]);
  if (built.exitCode !== 0) throw new Error(built.stderr.toString());
  return `${dir}/${name}`;
}
/** Starts `argv` behind `prefix` (each prefix execs it, keeping the pid), waits until it is `comm`, then `use`s it. */
async function withTarget<T>(
  argv: string[],
  o: { prefix?: string[]; cwd?: string; comm?: string },
  use: (pid: number) => T | Promise<T>,
) {
  const child = Bun.spawn([...(o.prefix ?? []), ...argv], { stdio: ["ignore", "ignore", "ignore"], cwd: o.cwd });
  try {
    const name = (o.comm ?? argv[0].split("/").at(-1)!).slice(0, 15);
    // Up to 10 s: under an emulated CPU (a booted kernel's test run) a prefix that mounts FUSE takes seconds.
    for (let i = 0; i < 1000 && !existsSync(`/proc/${child.pid}/comm`); i++) await Bun.sleep(10);
    for (let i = 0; i < 1000 && readFileSync(`/proc/${child.pid}/comm`, "utf8").trim() !== name; i++)
      await Bun.sleep(10);
    return await use(child.pid);
  } finally {
    child.kill("SIGKILL");
    await child.exited;
  }
}

/** A report of the renderers' tests: what a run as uid 107 with the syscall refused could give. */
const sample = {
  schema: "postcopy-probe/1",
  version: "0.1.0",
  postcopy: false,
  probe: {
    postcopy: false,
    qemu: "QEMU",
    consumer: "qemu>=8.0",
    route: "syscall",
    "qemu<8.0": false,
    "qemu>=8.0": false,
  },
  host: { kernel: "6.1.0", arch: "x86_64", uid: 107, user: "qemu" },
  checks: [
    {
      id: "page-size",
      title: "host page size >= target page size",
      status: "pass",
      detail: "host 4096, target 4096",
    },
    { id: "uffd-open", title: "a userfaultfd", status: "fail", detail: "userfaultfd(2): EPERM" },
    { id: "uffd-api", title: "UFFDIO_API handshake", status: "skip", detail: "no userfaultfd could be opened" },
  ],
  features: {},
  capabilities: Object.fromEntries(CAPABILITIES.map((c) => [c, c === "criu-lazy-pages"])),
  undetermined: [],
  required: { capabilities: ["postcopy-ram"], ok: false },
  diagnosis: [],
} as unknown as Report;
const pad = (s: string) => s.padEnd(72);

// ── The pipeline, in the order of probe.ts ──

describe("ffi.ts", () => {
  test("ioctl codes match include/uapi/linux/userfaultfd.h on x86_64", () => {
    expect(process.arch).toBe("x64");
    const codes = [
      K.UFFDIO_API,
      K.UFFDIO_REGISTER,
      K.UFFDIO_UNREGISTER,
      K.UFFDIO_WAKE,
      K.UFFDIO_COPY,
      K.UFFDIO_ZEROPAGE,
    ];
    expect([...codes, K.UFFDIO_WRITEPROTECT, K.USERFAULTFD_IOC_NEW]).toEqual([
      0xc018aa3fn,
      0xc020aa00n,
      0x8010aa01n,
      0x8010aa02n,
      0xc028aa03n,
      0xc020aa04n,
      0xc018aa06n,
      0xaa00n,
    ]);
  });
  test("UFFD_FEATURE has the 17 kernel bits in order", () => {
    expect(Object.values(K.UFFD_FEATURE)).toEqual(Array.from({ length: 17 }, (_, i) => 1n << BigInt(i)));
  });
  test("errnoName() names the kernel's numbers in header order and says so when it does not know one", () => {
    expect([1, 2, 11, 12, 13, 22, 24, 38, 95, 999].map(K.errnoName)).toEqual([
      "EPERM",
      "ENOENT",
      "EAGAIN",
      "ENOMEM",
      "EACCES",
      "EINVAL",
      "EMFILE",
      "ENOSYS",
      "EOPNOTSUPP",
      "errno 999",
    ]);
  });
});

describe("facts: read from the host, never a wrong one", () => {
  test("field() reads a value from its own line only: an empty one is empty, never the next line's", () => {
    const status = "Name:\tqemu\nGroups:\nNStgid:\t4321\nCapEff:\t0000000000080000\n";
    expect([field(status, "Groups"), field(status, "NStgid"), field(status, "CapEff"), field(status, "Uid")]).toEqual([
      "",
      "4321",
      "0000000000080000",
      null,
    ]);
  });

  test.skipIf(!isRoot)(
    "with /proc mounted subset=pid (systemd's ProcSubset=pid) the answers are those of a whole /proc",
    () => {
      const subset = cli(["--json"], {
        prefix: inNamespace('mount -t proc -o subset=pid proc /proc && exec "$@"').concat("sh"),
      });
      const whole = cli(["--json"]);
      const seen = (r: Report) => ({
        postcopy: r.postcopy,
        capabilities: r.capabilities,
        host: [r.host.kernel, r.host.miscMinor, r.host.hugePageSize],
        causes: causes(r).filter((c) => c !== NOTE),
      });
      expect(existsSync("/proc/misc")).toBe(true);
      expect([subset.code, seen(subset.report)]).toEqual([whole.code, seen(whole.report)]);
    },
  );

  test.skipIf(!isRoot)("unreadable or malformed host files are unknown, never a wrong fact", () => {
    const bad = `${world}/bad`;
    writeFileSync(bad, "not a number\n");
    writeFileSync(`${world}/passwd`, "root:x:0:0::/root:/bin/sh\nbroken line\n");
    const binds = ["/proc/sys/vm/nr_hugepages", "/proc/sys/vm/unprivileged_userfaultfd"]
      .map((f) => `mount --bind ${bad} ${f}`)
      .join(" && ");
    const prefix = inNamespace(`${binds} && mount --bind ${world}/passwd /etc/passwd && exec "$@"`).concat(["sh"]);
    const { code, report } = cli(["--json"], { prefix, path: pathWith(QEMU7) });
    expect(code).toBe(0);
    expect([report.host.nrHugepages, report.host.unprivilegedUserfaultfd]).toEqual([null, null]);
    expect(check(report, "register-hugetlb").status).toBe("pass");
  });

  test.skipIf(!isRoot)("a FIFO or device where a host file should be is unreadable, never a wait", () => {
    const fifo = `${world}/host-fifo`;
    Bun.spawnSync(["mkfifo", fifo]);
    const binds = ["/etc/passwd", "/etc/group", "/proc/sys/vm/unprivileged_userfaultfd"].map(
      (f) => `mount --bind ${fifo} ${f}`,
    );
    const prefix = [...inNamespace(`${binds.join(" && ")} && mount --bind /dev/zero /proc/meminfo && exec "$@"`), "sh"];
    const { code, report } = cli(["--json"], { prefix, path: pathWith(QEMU7) });
    // An unreadable /proc/meminfo leaves the huge page size to sysfs: the smallest size it lists.
    const sizes = readdirSync("/sys/kernel/mm/hugepages").map((n) => Number(n.match(/\d+/)![0]) * 1024);
    expect([code, report.host.user, report.host.unprivilegedUserfaultfd, report.host.hugePageSize]).toEqual([
      0,
      "0",
      null,
      Math.min(...sizes),
    ]);
  });
});

describe("checks on the real kernel", () => {
  test.skipIf(!isRoot)(
    "hugepages-not-reserved: as root every check passes, and hugetlb warns without reserved pages",
    async () => {
      const report = await probe(sys, facts, opts);
      expect(statuses(report)).toEqual({
        "page-size": "pass",
        "uffd-open": "pass",
        "qemu-route": "pass",
        "uffd-api": "pass",
        "uffd-features": "pass",
        "register-anon": "pass",
        "register-hugetlb": facts.nrHugepages ? "pass" : "warn",
        "register-shmem": "pass",
        "write-protect": "pass",
        "criu-events": "pass",
        "round-trip": "pass",
        "run-as": facts.qemuUser ? "warn" : "pass",
      });
      // Every capability but postcopy-multifd, which needs a QEMU version, and none was read (the routes agree).
      expect([report.postcopy, report.probe.postcopy, report.undetermined]).toEqual([true, true, ["postcopy-multifd"]]);
      expect(report.capabilities as Record<string, boolean>).toEqual(
        Object.fromEntries(CAPABILITIES.map((c) => [c, c !== "postcopy-multifd"])),
      );
      expect(check(report, "uffd-open").routes).toEqual({
        "device-node": "ok",
        device: "ok",
        syscall: "ok",
        "user-mode-only": "ok",
      });
    },
  );

  test.skipIf(!isRoot)("features are decoded from the kernel's own UFFDIO_API answer", async () => {
    const fd = sys.userfaultfd(0);
    const api = new BigUint64Array([K.UFFD_API, 0n, 0n]);
    expect(sys.ioctl(fd.ret, K.UFFDIO_API, api).ret).toBe(0);
    sys.close(fd.ret);
    const expected = Object.fromEntries(Object.entries(K.UFFD_FEATURE).map(([n, b]) => [n, (api[1] & b) !== 0n]));
    const report = await probe(sys, facts, opts);
    expect(report.features).toEqual({ ...expected, unknown: "0x0" });
    // This machine's kernel (6.8+) offers every bit the probe knows.
    expect(Object.values(expected)).toEqual(Array(17).fill(true));
  });

  test("decodeFeatures() names every bit and shows the rest in hex under unknown", () => {
    const decoded = decodeFeatures(K.UFFD_FEATURE.THREAD_ID | K.UFFD_FEATURE.MOVE | (1n << 40n));
    expect(
      Object.entries(decoded)
        .filter(([, v]) => v === true)
        .map(([k]) => k),
    ).toEqual(["THREAD_ID", "MOVE"]);
    expect(decoded.unknown).toBe("0x10000000000");
    expect(decodeFeatures(null)).toEqual({});
  });

  test("a target page size above the host's fails page-size, as QEMU does", async () => {
    const report = await probe(sys, facts, { ...opts, targetPageSize: facts.pageSize * 16 });
    const detail = `host ${facts.pageSize}, target ${facts.pageSize * 16}`;
    expect(check(report, "page-size")).toMatchObject({ status: "fail", detail });
    expect(report.postcopy).toBe(false);
  });

  test.skipIf(!isRoot || unprivileged !== "0")(
    "as uid 65534 the checks run on the user-mode-only uffd, the only one there, and report its features",
    () => {
      const { code, report } = cli(["--json"], { nobody: true, path: pathWith(QEMU7) });
      expect(code).toBe(1);
      expect([report.postcopy, report.host.uid]).toEqual([false, 65534]);
      expect(check(report, "uffd-open")).toMatchObject({
        status: "fail",
        errno: "EPERM",
        routes: { "device-node": "EACCES", device: "EACCES", syscall: "EPERM", "user-mode-only": "ok" },
        detail: "/dev/userfaultfd: EACCES, userfaultfd(2): EPERM, user-mode-only: ok",
      });
      expect(check(report, "register-anon").status).toBe("pass");
      expect(check(report, "uffd-api").detail).toEndWith(" on a user-mode-only uffd, the only one here");
      expect(Object.keys(report.features)).toHaveLength(18);
    },
  );

  test("running the whole probe 200 times leaves no fd, mapping or thread behind", async () => {
    for (let i = 0; i < 20; i++) await probe(sys, facts, opts);
    Bun.gc(true);
    const before = count();
    for (let i = 0; i < 200; i++) await probe(sys, facts, opts);
    Bun.gc(true);
    noLeak(before, count());
  });
});

describe("checks with a fake Sys, for what this machine cannot produce", () => {
  test("ENOSYS everywhere fails uffd-open and skips the rest", async () => {
    const fake: Sys = { ...sys, userfaultfd: () => fail("ENOSYS"), open: () => fail("ENOENT") };
    const report = await probe(fake, facts, opts);
    expect(check(report, "uffd-open")).toMatchObject({
      status: "fail",
      errno: "ENOSYS",
      detail: "/dev/userfaultfd: ENOENT, userfaultfd(2): ENOSYS, user-mode-only: ENOSYS",
    });
    expect(report.checks.slice(3, -1).map((c) => c.status)).toEqual(Array(8).fill("skip"));
    expect([report.postcopy, report.features]).toEqual([false, {}]);
  });

  test("vm-config: a real judge does not overturn what it did not reproduce: a VM that refuses stays a no", async () => {
    const answer = { path: "/usr/bin/qemu-system-x86_64", version: "7.2.0", accepts: true, message: "", multifd: null };
    const qemu = { path: answer.path, version: "7.2.0", major: 7, ptrace: false, answer };
    const vfio: Check = { id: "vm-devices", title: "", status: "fail", detail: "vfio", hint: "detach it" };
    const root = { name: "root", uid: 0, gid: 0, groups: [], qemu };
    const plain = await probe(sys, facts, { ...opts, qemu: true }, root);
    // As pid.ts gives it: the VM's failing check, which refuses QEMU's capabilities.
    const vm = { checks: [vfio], judging: [(forQemu: boolean) => (forQemu ? false : null)] };
    const refusing = await probe(sys, facts, { ...opts, qemu: true }, { ...root, ...vm });
    expect([plain.postcopy, refusing.postcopy, refusing.probe.postcopy]).toEqual([isRoot, false, false]);
  });

  test("QEMU's file capability opens a uffd where this run opens none (5.10): undetermined, so exit 2", async () => {
    const old = { ...facts, kernel: "5.10.0", uid: 65534, user: "nobody", capSysPtrace: false, miscMinor: null };
    const f = { ...old, unprivilegedUserfaultfd: 0, seccomp: 0, noNewPrivs: false, userNamespace: false };
    const userfaultfd = (flags: number) => fail(flags & K.UFFD_USER_MODE_ONLY ? "EINVAL" : "EPERM");
    const fake: Sys = { ...sys, userfaultfd, open: () => fail("ENOENT") };
    const qemu = { path: "/usr/bin/qemu-system-x86_64", version: "7.2.0", major: 7, ptrace: true };
    const report = await probe(fake, f, opts, { name: "nobody", uid: 65534, gid: 65534, groups: [], qemu });
    expect(check(report, "qemu-route").detail).toBe(
      "QEMU 7.2.0 (/usr/bin/qemu-system-x86_64) uses syscall: ok (by its cap_sys_ptrace file capability)",
    );
    expect(check(report, "uffd-api")).toMatchObject({ status: "skip" });
    expect(report.undetermined as string[]).toEqual(QEMU_CAPS);
    // Never a yes or a no beside "could not answer": UNKNOWN, why, and what would settle it.
    expect(renderHuman(report, { quiet: true, color: false }).split("\n").slice(-3)).toEqual([
      "Postcopy live migration (QEMU 7.2.0 postcopy-ram): UNKNOWN for nobody (uid 65534): postcopy-ram: QEMU opens its uffd by a file capability this run lacks",
      "  To settle it: run as root with --user, which keeps QEMU's capability, or ask QEMU with --qemu",
      "",
    ]);
    expect([report.postcopy, report.probe.postcopy, report.required.ok]).toEqual([null, null, null]);
    expect(report.capabilities["criu-lazy-pages"]).toBe(false);
    // The sysctl blocks CRIU and Firecracker here, not the QEMU that passes it by its capability.
    expect(blocked(report)).toEqual([
      ["unprivileged-userfaultfd", ["criu-lazy-pages", "firecracker-uffd"]],
      ["devnode-missing", ["firecracker-uffd"]],
    ]);
    expect([report.error, report.settle]).toEqual([
      "could not answer what was asked: postcopy-ram: QEMU opens its uffd by a file capability this run lacks",
      ["run as root with --user, which keeps QEMU's capability, or ask QEMU with --qemu"],
    ]);
    // With QEMU's own answer (--qemu), nothing is left unanswered.
    const answer = { path: qemu.path, version: qemu.version, accepts: true, message: "", multifd: null };
    const asked = { name: "nobody", uid: 65534, gid: 65534, groups: [], qemu: { ...qemu, answer } };
    const answered = await probe(fake, f, { ...opts, qemu: true }, asked);
    expect([answered.postcopy, answered.probe.postcopy, answered.error]).toEqual([true, null, undefined]);
    expect([check(answered, "qemu").status, check(answered, "qemu").detail, answered.qemu?.agrees]).toEqual([
      "pass",
      "QEMU 7.2.0 accepts postcopy-ram, which the probe could not judge",
      undefined,
    ]);
  });

  test.skipIf(!isRoot)(
    "a limit of the probe's own (no thread for a round trip) hides no answer the routes already gave: EPERM is a no",
    async () => {
      const f = { ...facts, uid: 65534, user: "nobody", capSysPtrace: false, unprivilegedUserfaultfd: 0, seccomp: 0 };
      const userfaultfd = (flags: number) => (flags & K.UFFD_USER_MODE_ONLY ? sys.userfaultfd(flags) : fail("EPERM"));
      const fake: Sys = { ...sys, userfaultfd, open: () => fail("EACCES"), thread: () => fail("EAGAIN") };
      const qemu = { path: "/usr/bin/qemu-system-x86_64", version: "7.2.0", major: 7, ptrace: false };
      const report = await probe(fake, f, opts, { name: "nobody", uid: 65534, gid: 65534, groups: [], qemu });
      expect(check(report, "round-trip").status).toBe("skip");
      expect([report.postcopy, report.error, report.undetermined.includes("postcopy-ram")]).toEqual([
        false,
        undefined,
        false,
      ]);
      expect(causes(report)).toContain("unprivileged-userfaultfd");
    },
  );

  test("UFFDIO_API EINVAL fails uffd-api and skips what needs the features", async () => {
    const ioctl: Sys["ioctl"] = (fd, req, arg) => (req === K.UFFDIO_API ? fail("EINVAL") : sys.ioctl(fd, req, arg));
    const report = await probe({ ...sys, ioctl }, facts, opts);
    expect(check(report, "uffd-api")).toMatchObject({ status: "fail", detail: "UFFDIO_API: EINVAL", errno: "EINVAL" });
    expect(check(report, "register-anon")).toMatchObject({ status: "skip", detail: "UFFDIO_API did not answer" });
    expect(report.postcopy).toBe(false);
  });

  test.skipIf(!isRoot)("a register reply without ZEROPAGE fails register-anon naming the bit", async () => {
    const zeropage = 1n << 4n;
    const ioctl: Sys["ioctl"] = (fd, req, arg) => {
      const r = sys.ioctl(fd, req, arg);
      if (req === K.UFFDIO_REGISTER) (arg as BigUint64Array)[3] &= ~zeropage;
      return r;
    };
    const report = await probe({ ...sys, ioctl }, facts, opts);
    expect(check(report, "register-anon")).toMatchObject({
      status: "fail",
      detail: "4096 B page, ioctls 0x12c; Missing userfault map features: UFFDIO_ZEROPAGE",
    });
    expect([report.postcopy, report.capabilities["postcopy-ram"]]).toEqual([false, false]);
  });

  test.skipIf(!isRoot)(
    "a limit of the probe's own (EMFILE, ENOMEM) is a check it could not run, never a no",
    async () => {
      const memfdCreate: Sys["memfdCreate"] = () => fail("EMFILE");
      const mmap: Sys["mmap"] = (a, l, p, flags, fd) =>
        flags & K.MAP_HUGETLB ? fail("ENOMEM") : sys.mmap(a, l, p, flags, fd);
      const report = await probe({ ...sys, memfdCreate, mmap }, facts, opts);
      expect(check(report, "register-shmem")).toMatchObject({
        status: "skip",
        detail:
          "could not run: memfd_create: EMFILE (a limit of the probe's own process, not an answer about the host)",
      });
      expect(check(report, "register-hugetlb")).toMatchObject({
        status: "skip",
        detail: "could not run: mmap: ENOMEM (a limit of the probe's own process, not an answer about the host)",
      });
      // postcopy-multifd too: no QEMU version was read (the routes agree).
      expect(report.undetermined).toEqual(["postcopy-hugetlbfs", "postcopy-shmem", "postcopy-multifd"]);
      expect([report.postcopy, report.error]).toEqual([true, undefined]);
      const required = await probe({ ...sys, memfdCreate, mmap }, facts, { ...opts, require: ["postcopy-shmem"] });
      expect(required.error).toBe(
        "could not answer what was asked: postcopy-shmem: (a limit of the probe's own process, not an answer about the host)",
      );
      expect(renderHuman(required, { quiet: false, color: false })).toContain("  postcopy-shmem        unknown\n");
    },
  );

  test.skipIf(!isRoot)(
    "no thread for a round trip (EAGAIN) leaves postcopy-ram undetermined and the run unanswered",
    async () => {
      const report = await probe({ ...sys, thread: () => fail("EAGAIN") }, facts, opts);
      expect(check(report, "round-trip")).toMatchObject({
        status: "skip",
        detail:
          "could not run: user-mode read: pthread_create(strlen): EAGAIN (a limit of the probe's own process, not an answer about the host)",
      });
      expect(report.undetermined).toContain("postcopy-ram");
      expect(report.error).toStartWith("could not answer what was asked: postcopy-ram");
    },
  );

  test.skipIf(!isRoot)(
    "with few fds (prlimit) what ran out is a check the probe could not run, and the exit status says so",
    () => {
      let seen = false;
      for (let n = 5; n <= 30 && !seen; n++) {
        const run = cli(["--json"], { prefix: ["/usr/bin/prlimit", `--nofile=${n}:${n}`] });
        const limited = (run.report.checks ?? []).filter((c) => c.detail.startsWith("could not run: "));
        if (!limited.length) continue;
        seen = true;
        for (const c of limited) expect(c.status).toBe("skip");
        const blocked = run.report.undetermined.includes("postcopy-ram");
        expect([run.code, run.report.error !== undefined]).toEqual(
          blocked ? [2, true] : [run.report.postcopy ? 0 : 1, false],
        );
        for (const cap of run.report.undetermined) expect(run.report.capabilities[cap]).toBe(false);
      }
      expect(seen).toBe(true);
    },
  );
});

describe("round trips: real faults served", () => {
  type Trip = { ok: boolean; ns: number; detail: string };
  const trips = (r: Report) => check(r, "round-trip").trips as Record<string, Trip>;

  test.skipIf(!isRoot)("as root every fault is served and the bytes prove it", async () => {
    const report = await probe(sys, facts, opts);
    const served = trips(report);
    expect(Object.keys(served)).toEqual(["user-read", "kernel-write", "zeropage", "write-protect"]);
    for (const [key, trip] of Object.entries(served)) {
      expect([key, trip.ok]).toEqual([key, true]);
      expect(trip.ns).toBeGreaterThan(0);
    }
    expect(served["user-read"].detail).toMatch(/^user-mode read \d+ µs$/);
    expect(report.roundTrip).toEqual({ ok: true, ns: served["kernel-write"].ns });
  });

  test.skipIf(!isRoot)("a wrong byte in the copied page fails the trip that reads it", async () => {
    // strlen must stop at the pattern's NUL: a COPY whose source has an earlier NUL is caught.
    const ioctl: Sys["ioctl"] = (fd, req, arg) => {
      if (req === K.UFFDIO_COPY) K.memory(Number((arg as BigUint64Array)[1]), facts.pageSize)[100] = 0;
      return sys.ioctl(fd, req, arg);
    };
    const report = await probe({ ...sys, ioctl }, facts, opts);
    const detail = `user-mode read: strlen returned 100, not ${PATTERN_NUL}`;
    expect(trips(report)["user-read"]).toMatchObject({ ok: false, detail });
    expect([trips(report)["kernel-write"].ok, report.postcopy]).toEqual([true, false]);
  });

  test.skipIf(!isRoot || unprivileged !== "0")(
    "as uid 65534 only a user-mode-only uffd exists and kernel-mode faults are not delivered",
    () => {
      const { report } = cli(["--json"], { nobody: true, path: pathWith(QEMU7) });
      const rt = check(report, "round-trip");
      expect([rt.status, rt.detail.startsWith("only a UFFD_USER_MODE_ONLY uffd: ")]).toEqual(["fail", true]);
      const served = rt.trips as Record<string, Trip>;
      expect([served["user-read"].ok, served["kernel-write"].ok, served.zeropage.ok]).toEqual([true, false, true]);
      const efault = "kernel-mode write: no fault event; uname returned -1 (EFAULT: the fault was not delivered)";
      expect(served["kernel-write"].detail).toBe(efault);
      expect(rt.detail).toEndWith("; QEMU cannot serve KVM's and vhost's kernel-mode faults with it");
    },
  );

  test.skipIf(!isRoot)("a fault never served fails within the bound and leaves nothing behind", async () => {
    const deaf: Sys = { ...sys, poll: () => ({ ret: 0, errno: 0, revents: [0, 0] }), read: () => fail("EAGAIN") };
    await probe(sys, facts, opts);
    Bun.gc(true);
    const before = count();
    const report = await probe(deaf, facts, { ...opts, boundMs: 50 });
    Bun.gc(true);
    noLeak(before, count());
    expect(trips(report)["user-read"]).toMatchObject({
      ok: false,
      detail: "user-mode read: no fault event within 50 ms",
    });
    expect(trips(report)["kernel-write"]).toMatchObject({
      ok: false,
      detail: "kernel-mode write: no fault event within 50 ms",
    });
    expect([check(report, "round-trip").status, report.postcopy]).toEqual(["fail", false]);
  });
});

describe("capabilities: the QEMU that will run decides", () => {
  test.skipIf(!isRoot || facts.miscMinor === null || !existsSync("/dev/userfaultfd"))(
    "devnode-impostor: with another device at the path the QEMU is read: QEMU 7.2 never opens it, QEMU 10 does",
    () => {
      // /dev/null over the device's path, in a mount namespace of the probe's own.
      const prefix = [
        "/usr/bin/unshare",
        "-m",
        "sh",
        "-c",
        'mount --bind /dev/null /dev/userfaultfd && exec "$@"',
        "sh",
      ];
      const answer = (dir: string) => {
        const { code, report } = cli(["--json"], { prefix, path: pathWith(dir) });
        return [
          code,
          report.postcopy,
          report.probe.qemu,
          routesOf(report)["device-node"],
          report.undetermined as string[],
        ];
      };
      expect(answer(QEMU7)).toEqual([0, true, "QEMU 7.2.0", "ENODEV", []]);
      expect(answer(QEMU10)).toEqual([2, null, "QEMU 10.0.0", "ENODEV", QEMU_CAPS]);
    },
  );

  test.skipIf(!isRoot)(
    "seccomp and qemu-before-8.0: under a filter the device serves QEMU 8.0+ only: QEMU 7.2 says no, QEMU 10 yes",
    () => {
      const old = underSeccomp("EPERM", ["--json"], { path: pathWith(QEMU7) });
      expect([old.code, old.report.postcopy, old.report.probe]).toEqual([
        1,
        false,
        {
          postcopy: false,
          qemu: "QEMU 7.2.0",
          consumer: "qemu<8.0",
          route: "syscall",
          "qemu<8.0": false,
          "qemu>=8.0": true,
        },
      ]);
      expect(blocked(old.report)).toEqual([
        ["seccomp", [...QEMU_CAPS, "criu-lazy-pages"]],
        ["qemu-before-8.0", QEMU_CAPS],
        ...(facts.nrHugepages === 0 ? [["hugepages-not-reserved", []] as [string, string[]]] : []),
      ]);
      const modern = underSeccomp("EPERM", ["--json"], { path: pathWith(QEMU10) });
      expect([modern.code, modern.report.postcopy, modern.report.probe.qemu, modern.report.probe.route]).toEqual([
        0,
        true,
        "QEMU 10.0.0",
        "device",
      ]);
      expect(blocked(modern.report).filter(([, b]) => b.length)).toEqual([["seccomp", ["criu-lazy-pages"]]]);
    },
  );

  test.skipIf(!isRoot)(
    "with no QEMU found it says both answers and the exit status follows 8.0 and later, with a warning",
    () => {
      const { code, report } = underSeccomp("EPERM", ["--json"], { path: NO_QEMU });
      expect([code, report.postcopy, report.probe["qemu<8.0"], report.probe["qemu>=8.0"]]).toEqual([
        0,
        true,
        false,
        true,
      ]);
      expect(check(report, "qemu-route")).toMatchObject({
        status: "warn",
        detail: expect.stringMatching(
          /^no QEMU found: looked for qemu-system-x86_64 on \$PATH, .*: yes for QEMU 8.0 and later, no before 8.0$/,
        ),
      });
      expect(renderHuman(report, { quiet: true, color: false })).toContain(
        "Postcopy live migration (QEMU postcopy-ram): SUPPORTED for QEMU 8.0 and later, NOT SUPPORTED before 8.0",
      );
    },
  );

  test.skipIf(!Bun.which("strace"))("a binary that is a link to a device or a FIFO is looked at, never opened", () => {
    const dir = `${world}/qemu-device-link`;
    mkdirSync(dir, { recursive: true, mode: 0o755 });
    symlinkSync("/dev/ptmx", `${dir}/ptmx-link`);
    Bun.spawnSync(["mkfifo", `${dir}/fifo`]);
    const script = `${dir}/read.ts`;
    writeFileSync(
      script,
      `import { loadSys } from "../ffi.ts"; import { versionIn } from "../qemu.ts";
      const sys = loadSys();
      console.log(JSON.stringify(["${dir}/ptmx-link", "${dir}/fifo"].map((p) => versionIn(sys, p, Date.now() + 1000))));`,
    );
    const run = traceOpens([`${world}/bun`, script]);
    expect(run.stdout).toBe("[null,null]\n");
    const opened = run.opens.filter((l) => /ptmx|fifo/.test(l));
    expect([opened.length, opened.filter((l) => !l.includes("O_PATH"))]).toEqual([2, []]);
  });

  test.skipIf(!isRoot || unprivileged !== "0")(
    "a wrapper script is run for its version only when it is the host's own, in a group killed whole",
    () => {
      const marker = `${5000 + (process.pid % 1000)}.75`;
      const body = `#!/bin/sh\n(sleep ${marker} &)\necho "QEMU emulator version 8.2.0 (wrapper)"\nexec sleep ${marker}\n`;
      const version = (r: Report) => [r.probe.qemu, check(r, "qemu-route").detail.split(": ").at(-1)];
      // Root's own: a tmpfs of mode 0755 in a private mount namespace, a script root owns and only root writes.
      const own = `mkdir /mnt/qemu && printf '%s' '${body}' > /mnt/qemu/qemu-system-x86_64 && chmod 755 /mnt/qemu/qemu-system-x86_64`;
      const prefix = [...inNamespace(`mount -t tmpfs -o mode=0755 none /mnt && ${own} && exec "$@"`), "sh"];
      const ran = cli(["--json"], { prefix, nobody: true, path: pathWith("/mnt/qemu") });
      expect(version(ran.report)).toEqual(["QEMU 8.2.0", "EPERM"]);
      expect(pids().filter((p) => cmdlineOf(p).includes(marker))).toEqual([]);
      // The same script where others can write (under /tmp): read, never run.
      const theirs = qemuDir("wrapper", body.replace("#!/bin/sh\n", `#!/bin/sh\ntouch ${world}/WRAPPER-RAN\n`));
      const read = cli(["--json"], { nobody: true, path: pathWith(theirs) });
      expect(check(read.report, "qemu-route").status).toBe("fail");
      expect([read.report.probe.qemu, existsSync(`${world}/WRAPPER-RAN`)]).toEqual(["QEMU", false]);
    },
  );

  test.skipIf(!isRoot || unprivileged !== "0" || facts.miscMinor === null)(
    "qemu-before-8.0: a user the device is open to: QEMU 7.2 still fails on the syscall, QEMU 10 opens the device",
    () => {
      const run = (dir: string) => cli(["--json"], { prefix: deviceOpenTo("0666"), nobody: true, path: pathWith(dir) });
      const old = run(QEMU7);
      expect(check(old.report, "uffd-open").routes).toMatchObject({
        "device-node": "ok",
        device: "ok",
        syscall: "EPERM",
      });
      expect([old.code, old.report.postcopy, causes(old.report).filter((c) => c !== NOTE)]).toEqual([
        1,
        false,
        ["unprivileged-userfaultfd", "criu-needs-ptrace", "qemu-before-8.0"],
      ]);
      const modern = run(QEMU10);
      expect([modern.code, modern.report.postcopy, modern.report.probe.route]).toEqual([0, true, "device"]);
      expect(existsSync(`${world}/dev-0666/ufd`)).toBe(false); // the namespace's tmpfs went with it
    },
  );

  test.skipIf(!isRoot || unprivileged !== "0" || !realQemu)(
    "unprivileged-userfaultfd: a QEMU that carries cap_sys_ptrace opens the syscall for any user, and says yes",
    () => {
      const dir = `${world}/qemu-capped`;
      mkdirSync(dir, { mode: 0o755 });
      copyFileSync(realQemu!, `${dir}/qemu-system-x86_64`);
      chmodSync(`${dir}/qemu-system-x86_64`, 0o755);
      const setcap = Bun.spawnSync(["/usr/sbin/setcap", "cap_sys_ptrace+ep", `${dir}/qemu-system-x86_64`]);
      expect(setcap.exitCode).toBe(0);
      // A QEMU outside /usr/bin finds its modules only when told where they are.
      const env = { QEMU_MODULE_DIR: "/usr/lib/x86_64-linux-gnu/qemu" };
      const { code, report } = cli(["--json", "--qemu"], { nobody: true, path: pathWith(dir), env });
      expect(report.qemu).toMatchObject({ accepts: true, agrees: true });
      expect([code, report.postcopy, report.probe.postcopy]).toEqual([0, true, true]);
      expect(check(report, "qemu-route").detail).toEndWith("uses syscall: ok (by its cap_sys_ptrace file capability)");
      expect(report.diagnosis.find((d) => d.cause === "unprivileged-userfaultfd")?.blocks).toEqual(["criu-lazy-pages"]);
      // This user's only uffd is user-mode-only: KVM's kernel-mode fault is QEMU's to serve, unproven by this run.
      expect(check(report, "round-trip")).toMatchObject({ status: "warn" });
      expect(check(report, "round-trip").detail).toStartWith("only a UFFD_USER_MODE_ONLY uffd: ");
      expect(check(report, "round-trip").detail).toEndWith(
        "QEMU's own uffd (by its file capability) serves kernel-mode faults, unproven here: run as root with --user, which keeps QEMU's capability, or ask QEMU with --qemu",
      );
      // As root, --user keeps the binary's capability for the child: every check then runs on QEMU's own route.
      const proven = cli(["--json", "--user", "nobody"], { path: pathWith(dir), env });
      expect([proven.code, proven.report.postcopy, proven.report.host.user]).toEqual([0, true, "nobody"]);
      expect(check(proven.report, "uffd-open").routes).toMatchObject({ syscall: "ok" });
      expect([check(proven.report, "round-trip").status, check(proven.report, "uffd-open").detail]).toEqual([
        "pass",
        "/dev/userfaultfd: EACCES, userfaultfd(2): ok, user-mode-only: ok; checks use syscall",
      ]);
    },
  );

  test.skipIf(!isRoot || facts.miscMinor === null)(
    "device-cgroup: a devices cgroup that denies the minor is the cause, not the file mode, even as root",
    () => {
      const cgroup = `/sys/fs/cgroup/devices/postcopy-probe-test-${process.pid}`;
      if (!existsSync("/sys/fs/cgroup/devices")) return;
      mkdirSync(cgroup);
      try {
        writeFileSync(`${cgroup}/devices.deny`, `c 10:${facts.miscMinor} rwm`);
        const prefix = ["/bin/sh", "-c", `echo $$ > ${cgroup}/cgroup.procs && exec "$@"`, "sh"];
        const { code, report } = cli(["--json"], { prefix, path: pathWith(QEMU10) });
        expect(check(report, "uffd-open").routes).toMatchObject({ "device-node": "EPERM", syscall: "ok" });
        expect([code, report.postcopy, report.probe.route]).toEqual([0, true, "syscall"]);
        const cgroupCause = report.diagnosis.find((d) => d.cause === "device-cgroup")!;
        expect(causes(report)).not.toContain("devnode-permission");
        expect(cgroupCause.blocks).toEqual(["firecracker-uffd"]);
        expect(cgroupCause.fix[0]).toBe(
          `echo 'c 10:${facts.miscMinor} rw' > ${cgroup}/devices.allow   # this cgroup, now`,
        );
      } finally {
        rmdirSync(cgroup);
      }
    },
  );
});

describe("diagnosis under real denials", () => {
  test.skipIf(!isRoot || unprivileged !== "0")(
    "unprivileged-userfaultfd and devnode-permission: as uid 65534 with QEMU 7.2, the sysctl, and the device only for Firecracker",
    () => {
      const { code, report } = cli(["--json"], { nobody: true, path: pathWith(QEMU7) });
      expect(code).toBe(1);
      const sysctl = report.diagnosis.find((d) => d.cause === "unprivileged-userfaultfd")!;
      expect(sysctl).toMatchObject({
        summary: "vm.unprivileged_userfaultfd is 0 and this user lacks CAP_SYS_PTRACE",
        blocks: [...QEMU_CAPS, "criu-lazy-pages"],
        evidence: [
          "userfaultfd(2): EPERM, with UFFD_USER_MODE_ONLY: ok",
          expect.stringMatching(/^vm.unprivileged_userfaultfd = 0 \((no sysctl file sets it|\/.* sets 0)\)$/),
          "CAP_SYS_PTRACE: not held by nobody (uid 65534)",
        ],
      });
      expect(sysctl.fix.slice(0, 2)).toEqual([
        "sysctl -w vm.unprivileged_userfaultfd=1",
        expect.stringMatching(/^echo vm.unprivileged_userfaultfd=1 > \/etc\/sysctl.d\/.*userfaultfd.conf$/),
      ]);
      expect(report.diagnosis.find((d) => d.cause === "devnode-permission")?.blocks).toEqual(["firecracker-uffd"]);
    },
  );

  test.skipIf(!isRoot)(
    "criu-needs-ptrace: EVENT_FORK is refused to a user without CAP_SYS_PTRACE, and to root in a user namespace",
    () => {
      const cause = (r: Report) => r.diagnosis.find((d) => d.cause === "criu-needs-ptrace");
      const nobody = cli(["--json"], { nobody: true }).report;
      const userNs = cli(["--json"], { prefix: ["/usr/bin/unshare", "-Ur"] }).report;
      const evidence = ["criu-events: UFFDIO_API with EVENT_FORK|EVENT_REMAP|EVENT_UNMAP|EVENT_REMOVE: EPERM"];
      for (const r of [nobody, userNs]) expect(cause(r)).toMatchObject({ blocks: ["criu-lazy-pages"], evidence });
      expect(cause(cli(["--json"]).report)).toBeUndefined();
    },
  );

  test.skipIf(!isRoot || unprivileged !== "0")(
    "unprivileged-userfaultfd: the sysctl's boot source is the file that wins, and the persistent fix sorts after it",
    () => {
      // Our own sysctl directories and sysctl.conf in a private mount namespace: the host's stay as they are.
      const boot = (files: Record<string, string>, conf = "") => {
        const dir = `${world}/sysctl-${Object.keys(files).length}-${conf.length}`;
        mkdirSync(dir, { recursive: true });
        writeFileSync(`${dir}/sysctl.conf`, conf);
        const writes = Object.entries(files).map(([path, text]) =>
          text === "/dev/null" ? `ln -s /dev/null ${path}` : `printf '%s\\n' '${text}' > ${path}`,
        );
        const mounts = ["/etc/sysctl.d", "/usr/lib/sysctl.d"].map((d) => `mount -t tmpfs none ${d}`);
        const script = [...mounts, `mount --bind ${dir}/sysctl.conf /etc/sysctl.conf`, ...writes, 'exec "$@"'];
        const { report } = cli(["--json"], {
          nobody: true,
          path: pathWith(QEMU7),
          prefix: [...inNamespace(script.join(" && ")), "sh"],
        });
        const cause = report.diagnosis.find((d) => d.cause === "unprivileged-userfaultfd")!;
        return [cause.evidence[1], cause.fix[1]];
      };
      const LIBVIRT = "/usr/lib/sysctl.d/60-qemu-postcopy-migration.conf";
      expect(
        boot({
          [LIBVIRT]: "vm.unprivileged_userfaultfd = 1",
          "/etc/sysctl.d/99-zz-hardening.conf": "vm.unprivileged_userfaultfd=0",
        }),
      ).toEqual([
        "vm.unprivileged_userfaultfd = 0 (/etc/sysctl.d/99-zz-hardening.conf sets 0)",
        "echo vm.unprivileged_userfaultfd=1 > /etc/sysctl.d/99-zz-hardening.conf-userfaultfd.conf",
      ]);
      // The same name in /etc masks libvirt's file: nothing sets it at boot.
      expect(
        boot({
          [LIBVIRT]: "vm.unprivileged_userfaultfd = 1",
          "/etc/sysctl.d/60-qemu-postcopy-migration.conf": "/dev/null",
        }),
      ).toEqual([
        "vm.unprivileged_userfaultfd = 0 (no sysctl file sets it)",
        "echo vm.unprivileged_userfaultfd=1 > /etc/sysctl.d/99-userfaultfd.conf",
      ]);
      expect(boot({ [LIBVIRT]: "vm.unprivileged_userfaultfd = 1" }, "vm.unprivileged_userfaultfd = 0\n")).toEqual([
        "vm.unprivileged_userfaultfd = 0 (/etc/sysctl.conf sets 0)",
        "sed -i 's/^\\s*vm.unprivileged_userfaultfd\\s*=.*/vm.unprivileged_userfaultfd = 1/' /etc/sysctl.conf",
      ]);
    },
  );

  test.skipIf(!isRoot || unprivileged !== "0")(
    "seccomp and unprivileged-userfaultfd: under a filter as uid 65534 both gates are named",
    () => {
      const { code, report } = underSeccomp("EPERM", ["--json"], { nobody: true, path: pathWith(QEMU7) });
      expect(code).toBe(1);
      expect(causes(report).filter((c) => c !== "hugepages-not-reserved")).toEqual([
        "devnode-permission",
        "seccomp",
        "unprivileged-userfaultfd",
      ]);
    },
  );

  test.skipIf(!isRoot)(
    "seccomp: the probe's own filter refusing UFFDIO_API (not the syscall) is named, never a bare no",
    () => {
      // ioctl(fd, UFFDIO_API, ...) -> ERRNO(EPERM): the request's low word is args[1] at offset 24.
      const api = Number(K.UFFDIO_API & 0xffffffffn);
      const insns = [
        ...[
          [0x20, 0, 0, 4],
          [0x15, 0, 5, 0xc000003e],
          [0x20, 0, 0, 0],
          [0x15, 0, 3, 16],
        ],
        ...[
          [0x20, 0, 0, 24],
          [0x15, 0, 1, api],
          [0x06, 0, 0, 0x00050001],
          [0x06, 0, 0, 0x7fff0000],
        ],
      ];
      const { code, report } = underSeccomp("EPERM", ["--json"], {
        insns,
        name: "seccomp-api",
        path: pathWith(QEMU10),
      });
      expect([code, report.postcopy, check(report, "uffd-api").detail]).toEqual([1, false, "UFFDIO_API: EPERM"]);
      const cause = report.diagnosis.find((d) => d.cause === "seccomp");
      expect(cause?.evidence).toEqual(["Seccomp: 2 in /proc/self/status (1 filters)", "uffd-api: UFFDIO_API: EPERM"]);
      expect(cause?.blocks).toContain("postcopy-ram");
    },
  );

  test.skipIf(!isRoot)("seccomp, not no-kernel-support: a filter returning ENOSYS", () => {
    const { code, report } = underSeccomp("ENOSYS", ["--json"], { nobody: true, path: pathWith(QEMU7) });
    expect([code, report.postcopy]).toEqual([1, false]);
    expect(causes(report)).toContain("seccomp");
    expect(causes(report)).not.toContain("no-kernel-support");
    const seccomp = report.diagnosis.find((d) => d.cause === "seccomp")!;
    expect(seccomp.evidence[1]).toBe("userfaultfd(2): ENOSYS, with UFFD_USER_MODE_ONLY: ENOSYS");
  });
});

describe("diagnose() as a decision table", () => {
  const base: Facts & Evidence = {
    ...facts,
    kernel: "6.1.0",
    arch: "x86_64",
    uid: 107,
    user: "qemu",
    unprivilegedUserfaultfd: 0,
    capSysPtrace: false,
    seccomp: 0,
    seccompFilters: 0,
    uidMap: "0 0 4294967295",
    userNamespace: false,
    devnode: { mode: "crw-------", kind: "c 10:126", owner: "root", group: "root", uid: 0, gid: 0 },
    miscMinor: 126,
    deviceCgroup: null,
    selinux: null,
    gvisor: false,
    libvirt: null,
    qemuUser: "qemu",
    nrHugepages: 0,
    kvmGroup: true,
    tools: ["setfacl", "udevadm", "setcap"],
    sysctlSource: null,
  };
  /** uffd-open's answers: [device-node, device, syscall, user-mode-only]. */
  type Answers = [string, string, string, string];
  const opened = ([node, device, syscall, umo]: Answers): Check[] => [
    {
      id: "uffd-open",
      title: "",
      status: "fail",
      detail: "",
      routes: { "device-node": node, device, syscall, "user-mode-only": umo },
    },
  ];
  const qemu7 = { path: "/usr/bin/qemu-system-x86_64", version: "7.2.0", major: 7, ptrace: false };
  type Case = {
    facts?: Partial<Facts & Evidence>;
    routes: Answers;
    checks?: Check[];
    qemu?: typeof qemu7;
    vm?: Check[];
    required?: Capability[];
  };
  const criuRefused: Check = {
    ...{ id: "criu-events", title: "", status: "fail", errno: "EPERM" },
    detail: "UFFDIO_API with EVENT_FORK|EVENT_REMAP|EVENT_UNMAP|EVENT_REMOVE: EPERM",
  };
  const pageFails: Check = { id: "page-size", title: "", status: "fail", detail: "host 4096, target 65536" };
  const hugetlbWarns: Check = { id: "register-hugetlb", title: "", status: "warn", detail: "vm.nr_hugepages is 0" };
  const noThreadId: Check = {
    id: "uffd-features",
    title: "",
    status: "warn",
    detail: "no THREAD_ID",
    missing: ["UFFD_FEATURE_THREAD_ID"],
  };
  const decide = ({ facts: f = {}, routes, checks = [], qemu, vm, required }: Case) =>
    diagnoseOf({ ...base, ...f }, [...opened(routes), ...checks], undefined, qemu ?? null, vm, required).map(
      (d) => d.cause,
    );
  const IMPOSTOR: Answers = ["ENODEV", "ENODEV", "EPERM", "ok"];
  const ROOT = { uid: 0, user: "root", capSysPtrace: true };
  const DENIED_DEVICE: Answers = ["EACCES", "EACCES", "ok", "ok"];
  const DEVICE_DENIED = { "device-node": "EACCES", device: "EACCES" };
  const vfio: Check = { id: "vm-devices", title: "", status: "fail", detail: "vfio", hint: "detach the VFIO device" };
  const [DENIED, OPEN] = [["EACCES", "EACCES", "EPERM", "ok"] as Answers, ["ok", "ok", "ok", "ok"] as Answers];

  /** For each cause: the least that must produce it, all it then names, and a near miss (one thing changed) that must not. */
  const TABLE: Array<{ cause: CauseId; hit: Case; causes: CauseId[]; miss: Case }> = [
    {
      cause: "criu-needs-ptrace",
      hit: { routes: OPEN, checks: [criuRefused] },
      causes: ["criu-needs-ptrace"],
      miss: { routes: OPEN, checks: [{ ...criuRefused, detail: "userfaultfd: EPERM" }] },
    },
    {
      cause: "target-page-size",
      hit: { routes: OPEN, checks: [pageFails] },
      causes: ["target-page-size"],
      miss: { routes: OPEN, checks: [{ ...pageFails, status: "pass" }] },
    },
    {
      cause: "no-kernel-support",
      hit: {
        facts: { unprivilegedUserfaultfd: null, miscMinor: null },
        routes: ["ENOENT", "ENOENT", "ENOSYS", "ENOSYS"],
      },
      causes: ["no-kernel-support", "devnode-missing"],
      miss: { facts: { unprivilegedUserfaultfd: null, seccomp: 2 }, routes: ["ENOENT", "ENOENT", "ENOSYS", "ENOSYS"] },
    },
    {
      cause: "gvisor",
      hit: {
        facts: { gvisor: true, miscMinor: null, unprivilegedUserfaultfd: null },
        routes: ["ENOENT", "ENOENT", "ENOSYS", "ENOSYS"],
      },
      causes: ["gvisor", "devnode-missing"],
      miss: { facts: { gvisor: true }, routes: OPEN },
    },
    {
      cause: "selinux",
      hit: { facts: { selinux: "enforcing", unprivilegedUserfaultfd: 1 }, routes: ["ok", "ok", "EACCES", "EACCES"] },
      causes: ["selinux"],
      miss: { facts: { selinux: "permissive", unprivilegedUserfaultfd: 1 }, routes: ["ok", "ok", "EACCES", "EACCES"] },
    },
    {
      cause: "devnode-missing",
      hit: { routes: ["ENOENT", "ENOENT", "EPERM", "ok"] },
      causes: ["devnode-missing", "unprivileged-userfaultfd"],
      miss: { routes: ["EACCES", "EACCES", "EPERM", "ok"] },
    },
    {
      cause: "devnode-impostor",
      hit: { facts: { devnode: { ...base.devnode!, mode: "prw-r--r--", kind: "a FIFO" } }, routes: IMPOSTOR },
      causes: ["devnode-impostor", "unprivileged-userfaultfd"],
      miss: { facts: { devnode: null }, routes: ["ENOENT", "ENOENT", "EPERM", "ok"] },
    },
    {
      cause: "libvirt-device-acl",
      hit: { facts: { libvirt: { user: "libvirt-qemu", deviceAcl: ["/dev/null", "/dev/kvm"] } }, routes: DENIED },
      causes: ["libvirt-device-acl", "devnode-permission", "unprivileged-userfaultfd"],
      miss: {
        facts: { libvirt: { user: "libvirt-qemu", deviceAcl: ["/dev/kvm", "/dev/userfaultfd"] } },
        routes: DENIED,
      },
    },
    {
      cause: "devnode-permission",
      hit: { routes: DENIED },
      causes: ["devnode-permission", "unprivileged-userfaultfd"],
      miss: { routes: ["ok", "ok", "EPERM", "ok"] },
    },
    {
      cause: "device-cgroup",
      hit: { facts: { uid: 0, user: "root", capSysPtrace: true }, routes: ["EPERM", "EPERM", "ok", "ok"] },
      causes: ["device-cgroup"],
      miss: { facts: { uid: 0, user: "root", capSysPtrace: true }, routes: OPEN },
    },
    {
      cause: "seccomp",
      hit: { facts: { seccomp: 2, uid: 0, user: "root", capSysPtrace: true }, routes: ["ok", "ok", "EPERM", "EPERM"] },
      causes: ["seccomp"],
      miss: { facts: { seccomp: 2 }, routes: ["ok", "ok", "EPERM", "ok"] },
    },
    {
      cause: "apparmor",
      hit: {
        facts: { ...ROOT, apparmor: { profile: "libvirt-f00d", denied: DEVICE_DENIED, ptrace: null } },
        routes: DENIED_DEVICE,
      },
      causes: ["apparmor"],
      miss: {
        facts: { ...ROOT, apparmor: { profile: "libvirt-f00d", denied: {}, ptrace: null } },
        routes: DENIED_DEVICE,
      },
    },
    {
      cause: "user-namespace",
      hit: {
        facts: { capSysPtrace: true, userNamespace: true, uidMap: "0 100000 65536" },
        routes: ["ok", "ok", "EPERM", "ok"],
      },
      causes: ["user-namespace"],
      miss: { facts: { capSysPtrace: true, userNamespace: false }, routes: ["ok", "ok", "EPERM", "ok"] },
    },
    {
      cause: "unprivileged-userfaultfd",
      hit: { routes: ["ok", "ok", "EPERM", "ok"] },
      causes: ["unprivileged-userfaultfd"],
      miss: { facts: { unprivilegedUserfaultfd: 1 }, routes: ["ok", "ok", "ok", "ok"] },
    },
    {
      cause: "qemu-before-8.0",
      hit: { routes: ["ok", "ok", "EPERM", "ok"], qemu: qemu7 },
      causes: ["unprivileged-userfaultfd", "qemu-before-8.0"],
      miss: { routes: DENIED, qemu: qemu7 },
    },
    {
      cause: "qemu-multifd",
      hit: { routes: OPEN, qemu: qemu7, required: ["postcopy-multifd"] },
      causes: ["qemu-multifd"],
      miss: { routes: OPEN, qemu: { ...qemu7, version: "10.1.0", major: 10 }, required: ["postcopy-multifd"] },
    },
    {
      cause: "missing-feature",
      hit: { routes: OPEN, checks: [noThreadId] },
      causes: ["missing-feature"],
      miss: { routes: OPEN, checks: [{ ...noThreadId, status: "pass", missing: [] }] },
    },
    {
      cause: "vm-config",
      hit: { routes: OPEN, vm: [vfio] },
      causes: ["vm-config"],
      miss: { routes: OPEN, vm: [{ ...vfio, status: "warn" }] },
    },
    {
      cause: "hugepages-not-reserved",
      hit: { routes: OPEN, checks: [hugetlbWarns] },
      causes: ["hugepages-not-reserved"],
      miss: { routes: OPEN, checks: [{ ...hugetlbWarns, status: "pass" }] },
    },
  ];

  test("every cause has a row in this table and an entry in the README's cause table", () => {
    const ids: string[] = [
      ...CAUSE_IDS,
      ...Object.keys(QEMU_CAUSES),
      ...Object.keys(PID_CAUSES),
      ...Object.keys(VM_CAUSES),
    ];
    expect(TABLE.map((row): string => row.cause).sort()).toEqual(ids.sort());
    const readme = readFileSync(`${import.meta.dir}/README.md`, "utf8");
    expect(ids.filter((id) => !readme.includes(`\n| \`${id}\` | `))).toEqual([]);
  });

  test.each(TABLE.map((row) => [row.cause, row] as const))("%s: diagnose() names it from its gate", (_, row) => {
    expect(decide(row.hit)).toEqual(row.causes);
  });
  test.each(TABLE.map((row) => [row.cause, row] as const))(
    "%s: diagnose() does not name it on a near miss",
    (_, row) => {
      expect(decide(row.miss)).not.toContain(row.cause);
    },
  );

  test("no cause contradicts a yes: with every route open nothing blocks, and what fails alone is named", () => {
    expect(diagnoseOf(base, opened(OPEN), [])).toEqual([]);
    const criuOnly = diagnoseOf(
      { ...base, seccomp: 2, uid: 0, capSysPtrace: true },
      opened(["ok", "ok", "EPERM", "EPERM"]),
      ["criu-lazy-pages"],
    );
    expect(criuOnly.map((d) => [d.cause, d.blocks])).toEqual([["seccomp", ["criu-lazy-pages"]]]);
  });

  test("devnode-permission: fixes use the tools this host has, add the user to the group they need, and appear once", () => {
    const withAll = diagnoseOf(base, opened(DENIED), undefined, null).find((d) => d.cause === "devnode-permission")!;
    expect(withAll.fix).toEqual([
      "setfacl -m u:qemu:rw /dev/userfaultfd   # now; lost at reboot",
      "usermod -aG kvm qemu   # QEMU started after this gets it",
      `echo 'KERNEL=="userfaultfd", GROUP="kvm", MODE="0660"' > /etc/udev/rules.d/99-userfaultfd.rules`,
      "udevadm control --reload && udevadm trigger --subsystem-match=misc",
    ]);
    const bare = diagnoseOf({ ...base, tools: [], kvmGroup: false }, opened(DENIED), undefined, null);
    expect(bare.find((d) => d.cause === "devnode-permission")!.fix).toEqual([
      "groupadd -r kvm",
      "usermod -aG kvm qemu   # QEMU started after this gets it",
      "chgrp kvm /dev/userfaultfd && chmod 0660 /dev/userfaultfd   # no udev here: again after each boot",
    ]);
    const all = diagnoseOf(base, opened(DENIED)).flatMap((d) => d.fix);
    expect(all.length).toBe(new Set(all).size);
  });

  test("unprivileged-userfaultfd: no setcap under NoNewPrivs, where an exec grants no file capability", () => {
    const setcaps = (noNewPrivs: boolean) =>
      diagnoseOf({ ...base, noNewPrivs }, opened(DENIED))
        .flatMap((d) => d.fix)
        .filter((x) => x.startsWith("setcap"));
    expect([setcaps(false), setcaps(true)]).toEqual([
      ['setcap cap_sys_ptrace+ep "$(command -v qemu-system-x86_64)"   # broad: also lets QEMU ptrace'],
      [],
    ]);
  });

  test("devnode-missing, devnode-impostor: a node made for a user other than root comes with that user's way in", () => {
    const fixes = (cause: CauseId, routes: Answers, f: Partial<Facts> = {}) =>
      diagnoseOf({ ...base, ...f }, opened(routes)).find((d) => d.cause === cause)!.fix;
    const access = [
      "setfacl -m u:qemu:rw /dev/userfaultfd   # now; lost at reboot",
      "usermod -aG kvm qemu   # QEMU started after this gets it",
      `echo 'KERNEL=="userfaultfd", GROUP="kvm", MODE="0660"' > /etc/udev/rules.d/99-userfaultfd.rules`,
      "udevadm control --reload && udevadm trigger --subsystem-match=misc",
    ];
    const container = "docker run --device /dev/userfaultfd ...   # a container: or podman run --device";
    const MISSING: Answers = ["ENOENT", "ENOENT", "EPERM", "ok"];
    expect(fixes("devnode-missing", MISSING)).toEqual([
      container,
      "mknod -m 0600 /dev/userfaultfd c 10 126   # this host",
      ...access,
    ]);
    expect(fixes("devnode-impostor", IMPOSTOR)).toEqual([
      container,
      "rm /dev/userfaultfd && mknod -m 0600 /dev/userfaultfd c 10 126",
      ...access,
    ]);
    expect(fixes("devnode-missing", ["ENOENT", "ENOENT", "ok", "ok"], ROOT)).toEqual([
      container,
      "mknod -m 0600 /dev/userfaultfd c 10 126   # this host",
    ]);
  });

  test("qemu-before-8.0: QEMU 7.2 gets no device fixes: its NO is the syscall's, with the device as the upgrade path", () => {
    const d = diagnoseOf(base, opened(["ok", "ok", "EPERM", "ok"]), undefined, qemu7);
    expect(d.map((x) => x.cause)).toEqual(["unprivileged-userfaultfd", "qemu-before-8.0"]);
    expect(d.flatMap((x) => x.fix).some((f) => f.includes("setfacl") || f.includes("udev"))).toBe(false);
  });

  test("devnode-missing: on a kernel before 6.1 the device is an upgrade path, after the fix this kernel takes", () => {
    const d = diagnoseOf(
      { ...base, kernel: "5.10.0", miscMinor: null },
      opened(["ENOENT", "ENOENT", "EPERM", "EPERM"]),
    );
    // The fix this kernel takes comes first; the kernel upgrade after it.
    expect(d.map((x) => [x.cause, x.fix])).toEqual([
      [
        "unprivileged-userfaultfd",
        [
          "sysctl -w vm.unprivileged_userfaultfd=1",
          "echo vm.unprivileged_userfaultfd=1 > /etc/sysctl.d/99-userfaultfd.conf",
          'setcap cap_sys_ptrace+ep "$(command -v qemu-system-x86_64)"   # broad: also lets QEMU ptrace',
        ],
      ],
      ["devnode-missing", ["boot Linux 6.1 or later for /dev/userfaultfd (this is 5.10.0)   # the upgrade path"]],
    ]);
  });

  test("unprivileged-userfaultfd: the persistent sysctl fix sorts after the file that sets it now, or edits sysctl.conf", () => {
    const fix = (file: string) =>
      diagnoseOf(
        { ...base, sysctlSource: { file, value: "0" } },
        opened(["ok", "ok", "EPERM", "ok"]),
        undefined,
        qemu7,
      )[0].fix[1];
    expect(fix("/usr/lib/sysctl.d/50-default.conf")).toBe(
      "echo vm.unprivileged_userfaultfd=1 > /etc/sysctl.d/99-userfaultfd.conf",
    );
    expect(fix("/etc/sysctl.d/99-zz-hardening.conf")).toBe(
      "echo vm.unprivileged_userfaultfd=1 > /etc/sysctl.d/99-zz-hardening.conf-userfaultfd.conf",
    );
    expect(fix("/etc/sysctl.conf")).toBe(
      "sed -i 's/^\\s*vm.unprivileged_userfaultfd\\s*=.*/vm.unprivileged_userfaultfd = 1/' /etc/sysctl.conf",
    );
  });

  test("missing-feature: names the kernel that added the feature on this architecture", () => {
    const wp: Check = {
      id: "write-protect",
      title: "",
      status: "fail",
      detail: "no WP",
      missing: ["UFFD_FEATURE_PAGEFAULT_FLAG_WP"],
    };
    const fixes = (arch: string) => diagnoseOf({ ...base, arch, kernel: "6.1.0" }, [...opened(OPEN), wp])[0].fix;
    expect(fixes("x86_64")).toEqual(["boot Linux 5.7 or later for UFFD_FEATURE_PAGEFAULT_FLAG_WP (this is 6.1.0)"]);
    expect(fixes("aarch64")).toEqual(["boot Linux 6.10 or later for UFFD_FEATURE_PAGEFAULT_FLAG_WP (this is 6.1.0)"]);
    expect(fixes("s390x")).toEqual(["no Linux release for s390x has UFFD_FEATURE_PAGEFAULT_FLAG_WP yet"]);
  });

  test("unprivileged-userfaultfd: on a kernel without UFFD_USER_MODE_ONLY the evidence says so", () => {
    const root = { ...base, uid: 0, capSysPtrace: true, kernel: "5.10.0", miscMinor: null };
    expect(diagnoseOf(root, opened(["ENOENT", "ENOENT", "ok", "EINVAL"]), [])).toEqual([]);
    const nobody = diagnoseOf(
      { ...base, kernel: "5.10.0", miscMinor: null },
      opened(["ENOENT", "ENOENT", "EPERM", "EINVAL"]),
    );
    expect(nobody.find((x) => x.cause === "unprivileged-userfaultfd")!.evidence[0]).toBe(
      "userfaultfd(2): EPERM, with UFFD_USER_MODE_ONLY: EINVAL (the flag came in Linux 5.11)",
    );
  });

  test.skipIf(!isRoot)("root without --user warns when QEMU has its own user here", async () => {
    const report = await probe(sys, { ...facts, uid: 0, qemuUser: "libvirt-qemu" }, opts);
    expect(check(report, "run-as")).toMatchObject({
      status: "warn",
      hint: "postcopy-probe --user libvirt-qemu",
      detail: "root's answer may not be QEMU's: QEMU runs as libvirt-qemu here; run postcopy-probe --user libvirt-qemu",
    });
  });
});

describe("the report and its renderers", () => {
  const report = sample;

  test("renderHuman() aligns each check and ends with the counts and the verdict", () => {
    expect(renderHuman(report, { quiet: false, color: false })).toBe(
      [
        "postcopy-probe 0.1.0: Linux 6.1.0 x86_64, qemu (uid 107)",
        `${pad("Checking for host page size >= target page size")}: PASS (host 4096, target 4096)`,
        `${pad("Checking for a userfaultfd")}: FAIL (userfaultfd(2): EPERM)`,
        `${pad("Checking for UFFDIO_API handshake")}: SKIP (no userfaultfd could be opened)`,
        "",
        "Capabilities:",
        "  postcopy-ram          no",
        "  postcopy-hugetlbfs    no",
        "  postcopy-shmem        no",
        "  background-snapshot   no",
        "  postcopy-blocktime    no",
        "  postcopy-multifd      no",
        "  criu-lazy-pages       yes",
        "  firecracker-uffd      no",
        "",
        "pass=1, warn=0, fail=1, skip=1",
        "Postcopy live migration (QEMU postcopy-ram): NOT SUPPORTED for qemu (uid 107)",
        "",
      ].join("\n"),
    );
  });

  test("renderHuman() colours statuses only when asked", () => {
    expect(renderHuman(report, { quiet: true, color: true })).toBe(
      [
        `${pad("Checking for a userfaultfd")}: \x1b[31mFAIL\x1b[0m (userfaultfd(2): EPERM)`,
        "Postcopy live migration (QEMU postcopy-ram): \x1b[31mNOT SUPPORTED\x1b[0m for qemu (uid 107)",
        "",
      ].join("\n"),
    );
  });

  test("renderHuman() with quiet prints only warnings, failures, why (what each cause blocks) and the verdict", () => {
    const diagnosis = [
      {
        cause: "seccomp",
        summary: "a filter",
        blocks: ["postcopy-ram"],
        evidence: ["Seccomp: 2"],
        fix: ["docker run ..."],
      },
      {
        cause: "hugepages-not-reserved",
        summary: "no huge pages",
        blocks: [],
        evidence: ["vm.nr_hugepages = 0"],
        fix: [],
      },
    ];
    expect(renderHuman({ ...report, diagnosis } as Report, { quiet: true, color: false }).split("\n")).toEqual([
      `${pad("Checking for a userfaultfd")}: FAIL (userfaultfd(2): EPERM)`,
      "",
      "Why / Fix:",
      "  seccomp: a filter [blocks postcopy-ram]",
      "    because Seccomp: 2",
      "    $ docker run ...",
      "  hugepages-not-reserved: no huge pages [a note: it blocks nothing]",
      "    because vm.nr_hugepages = 0",
      "Postcopy live migration (QEMU postcopy-ram): NOT SUPPORTED for qemu (uid 107)",
      "",
    ]);
  });

  test("renderHuman() says the installed QEMU's answer and what 8.0 and later would say", () => {
    const probe = { ...report.probe, qemu: "QEMU 7.2.22", consumer: "qemu<8.0", "qemu>=8.0": true };
    const split = { ...report, probe } as Report;
    expect(renderHuman(split, { quiet: true, color: false }).split("\n").slice(-3)).toEqual([
      "Postcopy live migration (QEMU 7.2.22 postcopy-ram): NOT SUPPORTED for qemu (uid 107)",
      "  QEMU 8.0 and later would be SUPPORTED here",
      "",
    ]);
  });

  test("renderHuman() says whether --require's capabilities are there", () => {
    const required = { ...report, required: { capabilities: ["criu-lazy-pages"], ok: true } } as Report;
    expect(renderHuman(required, { quiet: true, color: false }).split("\n").slice(-2)).toEqual([
      "Required criu-lazy-pages: YES",
      "",
    ]);
  });

  test("renderJson() is the report and nothing else", () => {
    expect(JSON.parse(renderJson(report))).toEqual(report);
  });

  test("a usage error still gives --json its JSON document and Prometheus its exposition, on stdout only", () => {
    const json = cli(["--json", "--bogus"]);
    expect([json.code, JSON.parse(json.stdout)]).toEqual([
      2,
      { schema: "postcopy-probe/1", version: VERSION, error: 'Unknown option "--bogus"' },
    ]);
    const prom = cli(["--format", "prometheus", "--target-page-size", "3"]);
    expect([prom.code, prom.stdout]).toEqual([
      2,
      "# HELP postcopy_probe_up 1 when the probe answered what was asked, 0 when it could not.\n# TYPE postcopy_probe_up gauge\npostcopy_probe_up 0\n",
    ]);
    expect(errorDocument("human", "x")).toBe("");
    const flag = cli(["--json=false"]);
    expect([flag.code, flag.report.error]).toEqual([2, 'Option "--json" takes no value: "--json=false"']);
  });

  test("a report that cannot be written is exit 2 with the reason on stderr, never 0", () => {
    const full = Bun.spawnSync([`${world}/bun`, `${world}/probe.ts`, "--json"], { stdout: Bun.file("/dev/full") });
    expect([full.exitCode, full.stderr.toString()]).toEqual([
      2,
      "postcopy-probe: Cannot write the report to stdout: ENOSPC\n",
    ]);
    const closed = Bun.spawnSync(["/bin/sh", "-c", `exec ${world}/bun ${world}/probe.ts --json >&-`]);
    expect([closed.exitCode, closed.stderr.toString()]).toEqual([
      2,
      "postcopy-probe: Cannot write the report: stdout is closed\n",
    ]);
  });

  test.skipIf(!isRoot)("--require makes the exit status stand for the named capabilities, each once", () => {
    const run = cli(["--json", "--require", "postcopy-ram,criu-lazy-pages,postcopy-ram"]);
    expect([run.code, run.report.required]).toEqual([
      0,
      { capabilities: ["postcopy-ram", "criu-lazy-pages"], ok: true },
    ]);
  });
});

describe("the command line", () => {
  test("parseArgs() reads every option; colour needs a TTY, no NO_COLOR and a TERM that is not dumb", () => {
    expect(parseArgs(["--json", "-q", "--target-page-size=16384", "--bench"], {}, true)).toEqual({
      ...opts,
      format: "json",
      quiet: true,
      targetPageSize: 16384,
      color: true,
      bench: 10000,
      help: false,
      version: false,
    });
    expect([parseArgs(["--bench", "500", "--json"]).bench, parseArgs(["--bench=2"]).bench]).toEqual([500, 2]);
    const qemus = [
      parseArgs(["--qemu"]).qemu,
      parseArgs(["--qemu", "--json"]).qemu,
      parseArgs(["--qemu", "/opt/q", "-q"]).qemu,
    ];
    expect(qemus).toEqual([true, true, "/opt/q"]);
    expect(parseArgs(["--output", "/x.prom"]).output).toBe("/x.prom");
    expect(parseArgs(["--format", "human"], { NO_COLOR: "1" }, true).color).toBe(false);
    expect(parseArgs([], { TERM: "dumb" }, true).color).toBe(false);
  });

  test.each([
    [["--bogus"], 'postcopy-probe: Unknown option "--bogus"'],
    [["--quiet=1"], 'postcopy-probe: Option "--quiet" takes no value: "--quiet=1"'],
    [
      ["--target-page-size", "abc"],
      'postcopy-probe: Invalid target page size "abc": a power of two in bytes, such as 4096',
    ],
    [
      ["--target-page-size", "3000"],
      'postcopy-probe: Invalid target page size "3000": a power of two in bytes, such as 4096',
    ],
    [
      ["--target-page-size", "4294971392"],
      'postcopy-probe: Invalid target page size "4294971392": a power of two in bytes, such as 4096',
    ],
    [["--format", "xml"], 'postcopy-probe: Unknown format "xml": use human, json, prometheus'],
    [
      ["--require", "postcopy-ram,teleport"],
      'postcopy-probe: Unknown capability "teleport": use postcopy-ram, postcopy-hugetlbfs, postcopy-shmem, background-snapshot, postcopy-blocktime, postcopy-multifd, criu-lazy-pages, firecracker-uffd',
    ],
    [["--format"], 'postcopy-probe: Option "--format" needs a value'],
    [["--bench=1"], 'postcopy-probe: Invalid fault count "1": a whole number from 2 to 500000'],
    [["--bench", "ten"], 'postcopy-probe: Invalid fault count "ten": a whole number from 2 to 500000'],
    [["--user"], 'postcopy-probe: Option "--user" needs a value'],
    [[`--${"x".repeat(100)}\u0007`], `postcopy-probe: Unknown option "--${"x".repeat(58)}…"`],
    [["--format", "a\nb"], 'postcopy-probe: Unknown format "a\\nb": use human, json, prometheus'],
  ])("%p exits 2 with a message and the usage line", (args, message) => {
    const run = cli(args);
    expect([run.code, run.stdout]).toEqual([2, ""]);
    expect(run.stderr.split("\n")[0]).toBe(message);
    expect(run.stderr.split("\n")[1]).toStartWith("Usage: postcopy-probe ");
  });

  test("--pid with --qemu, and an --output of nothing (an unset variable), are usage errors: exit 2, never a run", () => {
    for (const [args, message] of [
      [
        ["--pid", "1", "--qemu"],
        "--qemu cannot answer for --pid: a process's QEMU is never run to ask it; use --pid with --migrate",
      ],
      [["--output", ""], 'Option "--output" needs a file name, not ""'],
    ] as const) {
      const { code, stdout, stderr } = cli([...args]);
      expect([code, stdout, stderr.split("\n")[0]]).toEqual([2, "", `postcopy-probe: ${message}`]);
    }
  });

  test("without the JIT (BUN_JSC_useJIT=0, or an address-space limit) bun:ffi cannot work, and the error says so", () => {
    const { code, stderr, report } = cli(["--json"], { env: { BUN_JSC_useJIT: "0" } });
    const why =
      "Cannot use bun:ffi: bun:ffi requires the JIT (off by BUN_JSC_useJIT=0, or by an address-space limit such as ulimit -v under about 2 GiB)";
    expect([code, stderr, report.error]).toEqual([2, `postcopy-probe: ${why}\n`, why]);
  });

  test("--version prints the package version and --help the usage", () => {
    const pkg = JSON.parse(readFileSync(`${import.meta.dir}/package.json`, "utf8"));
    expect(VERSION).toBe(pkg.version);
    expect(cli(["--version"])).toMatchObject({ code: 0, stdout: `${pkg.version}\n`, stderr: "" });
    const help = cli(["--help"]);
    expect([help.code, help.stdout.startsWith("Usage: postcopy-probe ")]).toEqual([0, true]);
  });

  test.skipIf(!isRoot)("--json prints only the JSON document and exits 0 as root", () => {
    const { code, report } = cli(["--json"]);
    expect([code, report.schema, report.version, report.postcopy]).toEqual([0, "postcopy-probe/1", VERSION, true]);
  });
});

// ── Each option, in its own file ──

describe("--qemu (qemu.ts): the QEMU's own answer is the headline", () => {
  const GREETING = `echo '{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}, "package": ""}, "capabilities": []}}'`;
  const answers = (...lines: string[]) => [GREETING, ...lines.map((l) => `read l; echo '${l}'`)].join("\n");
  const REJECTS = answers(
    '{"return": {}}',
    '{"error": {"class": "GenericError", "desc": "Postcopy is not supported"}}',
    '{"return": {}}',
  );

  test("a QEMU that answers postcopy-ram, not multifd, within the bound: only postcopy-multifd is left unanswered", async () => {
    const dir = qemuDir("silent-multifd", `${answers('{"return": {}}', '{"return": {}}')}\nsleep 10`);
    const asked = (require: Capability[]) =>
      probe(sys, facts, { ...opts, qemu: `${dir}/qemu-system-x86_64`, qemuMs: 500, require });
    const plain = await asked(["postcopy-ram"]);
    expect([plain.postcopy, plain.error, plain.qemu?.accepts, plain.qemu?.multifd]).toEqual([
      true,
      undefined,
      true,
      { accepts: null, message: "no answer within 500 ms: killed" },
    ]);
    const multifd = await asked(["postcopy-multifd"]);
    expect([multifd.postcopy, multifd.required.ok, multifd.error]).toEqual([
      null,
      null,
      "could not answer what was asked: --qemu: QEMU 7.2.0 did not answer multifd beside postcopy-ram (no answer within 500 ms: killed)",
    ]);
  });

  test.skipIf(!realQemu || !isRoot)("as root QEMU accepts postcopy-ram and the probe agrees", () => {
    const { code, report } = cli(["--json", "--qemu"]);
    expect(code).toBe(0);
    expect(report.qemu).toMatchObject({ path: realQemu, accepts: true, message: "", agrees: true });
    expect(check(report, "qemu")).toMatchObject({
      status: "pass",
      detail: `QEMU ${report.qemu!.version} accepts postcopy-ram, as the probe says`,
    });
  });

  test.skipIf(!realQemu || !isRoot)(
    "target-page-size: the guest's pages, which the QEMU asked has not got, keep the probe's no against its yes",
    () => {
      const { code, report } = cli(["--json", "--qemu", "--target-page-size", "65536"]);
      const [page, blocking] = [`host ${sys.pageSize()}, target 65536`, causes(report).filter((c) => c !== NOTE)];
      expect([code, report.postcopy, report.answeredBy, report.qemu?.accepts, blocking]).toEqual([
        1,
        false,
        undefined,
        true,
        ["target-page-size"],
      ]);
      const unasked = `page-size fails (${page}), which the QEMU asked does not reproduce`;
      expect(report.qemu!.why).toBe(`${unasked}: the probe's no stands`);
      const human = renderHuman(report, { quiet: true, color: false });
      const line = `Postcopy live migration (QEMU ${report.qemu!.version} postcopy-ram): NOT SUPPORTED for root (uid 0)`;
      expect(human).toContain(`${line}\n`);
      const none = `none on ${facts.arch}, whose pages are always ${sys.pageSize()} B: migrate this guest without postcopy`;
      expect(human).toContain(`    $ ${none}\n`);
    },
  );

  test("qemuAnswer(): what stands keeps only the probe's no; where the probe says yes and QEMU no, QEMU decides", () => {
    const answer = { version: "7.2.0", accepts: false, message: "Postcopy is not supported", multifd: null };
    const qemu = { path: "/usr/bin/qemu-system-x86_64", version: "7.2.0", ptrace: false, answer } as Qemu;
    const stands = "page-size fails (host 4096, target 65536), which the QEMU asked does not reproduce";
    expect(qemuAnswer(qemu, true, stands).json.qemu?.why).toBe(
      "the reason is not known to the probe: QEMU's answer decides",
    );
    const accepting = { ...qemu, answer: { ...answer, accepts: true, message: "" } } as Qemu;
    expect(qemuAnswer(accepting, false, stands).json.qemu?.why).toBe(`${stands}: the probe's no stands`);
  });

  test.skipIf(!realQemu || !isRoot)("multifd beside postcopy-ram: taken before 8.1, refused from 8.1 to 10.0", () => {
    for (const q of [realQemu!, ...(qemu10 ? [qemu10] : [])]) {
      const answer = askQemu(sys, q, 5000);
      if (typeof answer === "string") throw new Error(answer);
      const [major, minor] = answer.version.split(".").map(Number);
      const refuses = (major === 8 && minor >= 1) || major === 9 || (major === 10 && minor === 0);
      const message = refuses ? "Postcopy is not yet compatible with multifd" : "";
      expect([answer.version, answer.multifd]).toEqual([answer.version, { accepts: !refuses, message }]);
    }
  });

  test.skipIf(!realQemu || !isRoot || unprivileged !== "0")(
    "as uid 65534 QEMU rejects postcopy-ram and the probe agrees",
    () => {
      const { code, report } = cli(["--json", "--qemu"], { nobody: true });
      expect(code).toBe(1);
      expect(report.qemu).toMatchObject({ accepts: false, agrees: true });
      expect(report.qemu!.message).toStartWith("Postcopy is not supported");
    },
  );

  test.skipIf(!realQemu || !isRoot)(
    "unprivileged-userfaultfd: setcap names the file a QEMU's path resolves to, never a link a tenant could change",
    () => {
      // A directory of uid 65534's with a link to /usr/bin in it: the link could point elsewhere by paste time.
      const dir = `${world}/tenant-${Math.random().toString(36).slice(2)}`;
      mkdirSync(dir, { mode: 0o755 });
      chownSync(dir, 65534, 65534);
      symlinkSync(dirname(realpathSync(realQemu!)), `${dir}/bin`);
      const real = realpathSync(realQemu!);
      const qemu = identify(sys, facts, { ...opts, qemu: `${dir}/bin/${basename(real)}`, qemuMs: 5000 });
      const seen = { f: { ...facts, tools: ["setcap"], apparmor: null, noNewPrivs: false }, qemu } as unknown as Seen;
      expect([qemu.path, qemu.grantable, setcap(seen)]).toEqual([
        `${dir}/bin/${basename(real)}`,
        real,
        [`setcap cap_sys_ptrace+ep ${real}   # broad: also lets QEMU ptrace`],
      ]);
      rmSync(dir, { recursive: true });
    },
  );

  test.skipIf(!realQemu || !isRoot || unprivileged !== "0" || !Bun.which("setcap"))(
    "unprivileged-userfaultfd: setcap is offered only where an exec would grant it: not to a script, not under NoNewPrivs",
    () => {
      // A wrapper script of root's in a directory of root's (a tmpfs on /mnt, in a mount namespace of its own).
      const wrap = `mount -t tmpfs -o mode=0755 none /mnt && printf '%s' "$0" > /mnt/qemu && chmod 0755 /mnt/qemu`;
      const script = [
        "/usr/bin/unshare",
        "-m",
        "sh",
        "-c",
        `${wrap} && exec "$@"`,
        `#!/bin/sh\nexec ${realQemu} "$@"\n`,
      ];
      const setcaps = (qemu: string, prefix: string[] = []) => {
        const { code, report } = cli(["--json", "--qemu", qemu], { prefix, nobody: true });
        const fixes = report.diagnosis.flatMap((d) => d.fix);
        return [code, report.qemu?.accepts, fixes.filter((x) => x.startsWith("setcap"))];
      };
      const broad = `setcap cap_sys_ptrace+ep ${realQemu}   # broad: also lets QEMU ptrace`;
      expect(setcaps(realQemu!)).toEqual([1, false, [broad]]);
      expect(setcaps("/mnt/qemu", script)).toEqual([1, false, []]);
      expect(setcaps(realQemu!, ["/usr/bin/setpriv", "--no-new-privs"])).toEqual([1, false, []]);
    },
    30_000,
  );

  test.skipIf(!realQemu || !isRoot)(
    "under a seccomp filter QEMU 7.2 refuses, and the probe, knowing its version, agrees",
    () => {
      const { code, report } = underSeccomp("EPERM", ["--json", "--qemu"]);
      const major = Number(report.qemu!.version.split(".")[0]);
      expect([code, report.postcopy, report.qemu!.agrees]).toEqual([major >= 8 ? 0 : 1, major >= 8, true]);
    },
  );

  test.skipIf(!isRoot)(
    "a QEMU that rejects what the probe accepts decides: verdict, JSON, Prometheus and exit status",
    () => {
      const dir = qemuDir(
        "rejects",
        `echo 'postcopy_ram_supported_by_host: userfaultfd not available: Operation not permitted' >&2\n${REJECTS}`,
      );
      const { code, report } = cli(["--json", "--qemu"], { path: pathWith(dir) });
      expect(code).toBe(1);
      expect([report.postcopy, report.probe.postcopy, report.required.ok]).toEqual([false, true, false]);
      expect(report.qemu).toEqual({
        path: `${dir}/qemu-system-x86_64`,
        version: "7.2.0",
        accepts: false,
        agrees: false,
        message:
          "Postcopy is not supported: postcopy_ram_supported_by_host: userfaultfd not available: Operation not permitted",
        multifd: null,
        why: "the reason is not known to the probe: QEMU's answer decides",
      });
      const human = renderHuman(report, { quiet: true, color: false });
      expect(human).toContain("Postcopy live migration (QEMU 7.2.0's own answer): NOT SUPPORTED for root (uid 0)\n");
      expect(human).toContain("The probe's own answer: SUPPORTED; QEMU 7.2.0's own answer disagrees, and decides\n");
      const metrics = renderPrometheus(report);
      expect(metrics).toContain("\npostcopy_probe_supported 0\n");
      expect(metrics).toContain("\npostcopy_probe_probe_supported 1\n");
    },
  );

  const HOSTILE: Array<[string, string, string]> = [
    ["a bare number", "echo 5", "no QMP greeting with a version: 5"],
    ["null", "echo null", "no QMP greeting with a version: null"],
    ["a greeting that is not an object", `echo '{"QMP": 1}'`, "no QMP greeting with a version"],
    ["a greeting without a version", `echo '{"QMP": {"capabilities": []}}'`, "no QMP greeting with a version"],
    ["text that is not JSON", "printf 'hello\\033[31m\\r\\nworld\\n'", "no QMP greeting with a version: hello [31m"],
    ["a greeting and nothing more", GREETING, "no QMP answer to migrate-set-capabilities"],
    ["megabytes on stdout", "yes x | head -c 5000000", "more than 65536 bytes of output and no answer: killed"],
    ["megabytes on stderr", "yes x | head -c 5000000 >&2", "more than 65536 bytes of output and no answer: killed"],
  ];
  test.each(HOSTILE)(
    "a QEMU printing %s fails the check with a short, clean reason and exit 2",
    (name, body, reason) => {
      const dir = qemuDir(`hostile-${name.replace(/\W+/g, "-")}`, body);
      const { code, report, stderr } = cli(["--json", "--qemu", `${dir}/qemu-system-x86_64`]);
      expect(code).toBe(2);
      expect(check(report, "qemu")).toMatchObject({ status: "fail", detail: `${dir}/qemu-system-x86_64: ${reason}` });
      expect(check(report, "qemu").detail).not.toMatch(/\p{Cc}/u);
      expect(report.error).toStartWith("could not answer what was asked: --qemu: ");
      expect(stderr).toStartWith("postcopy-probe: could not answer what was asked: --qemu: ");
    },
  );

  test("the exchange is complete with migrate-set-capabilities' reply: quit's is not awaited, the group is killed", () => {
    const marker = `${3000 + (process.pid % 1000)}.25`;
    // No reply to quit, and a grandchild that holds the pipe open: the answer counts at once.
    const rejects = answers(
      '{"return": {}}',
      '{"error": {"class": "GenericError", "desc": "Postcopy is not supported"}}',
    );
    const dir = qemuDir("grandchild", `(sleep ${marker} &)\n${rejects}\nexec sleep ${marker}`);
    const start = Date.now();
    const answer = askQemu(sys, `${dir}/qemu-system-x86_64`, 5000);
    expect(Date.now() - start).toBeLessThan(4000);
    expect(answer).toMatchObject({ version: "7.2.0", accepts: false, message: "Postcopy is not supported" });
    Bun.sleepSync(100);
    const left = pids().filter((p) => cmdlineOf(p).includes(marker));
    expect(left).toEqual([]);
  });

  test("a QEMU that does not answer is killed within the bound, and the run cannot say yes", () => {
    const dir = qemuDir("silent", `${GREETING}\nexec sleep 30`);
    const start = Date.now();
    const answer = askQemu(sys, `${dir}/qemu-system-x86_64`, 300);
    expect([answer, Date.now() - start < 3000]).toEqual(["no answer within 300 ms: killed", true]);
  });

  test("no QEMU found with --qemu is exit 2 with the places looked at", () => {
    const { code, report } = cli(["--json", "--qemu"], { path: NO_QEMU });
    expect(code).toBe(2);
    expect(report.error).toMatch(
      /^could not answer what was asked: --qemu: no QEMU found: looked for qemu-system-x86_64 on \$PATH, /,
    );
  });

  test("without --qemu there is no qemu check and nothing is spawned", async () => {
    expect((await probe(sys, facts, opts)).checks.map((c) => c.id)).not.toContain("qemu");
  });

  test("poll() on two fds says which one is ready", () => {
    const [a, b] = [pipe(), pipe()];
    sys.write(b.ends[1], "x");
    const r = poll(a.ends[0], 0, b.ends[0]);
    for (const fd of [...a.ends, ...b.ends]) sys.close(fd);
    expect([r.ret, r.revents]).toEqual([1, [0, K.POLLIN]]);
  });
});

describe("--user (context.ts): the whole probe again, as QEMU's user", () => {
  test.skipIf(!isRoot)("--output is written by the parent, as root, where only root may write", () => {
    const dir = mkdtempSync(`${world}/root-only-`);
    chmodSync(dir, 0o755);
    const run = cli(["--user", "nobody", "--format", "prometheus", "--output", `${dir}/postcopy.prom`]);
    expect([run.code === 0 || run.code === 1, run.stdout, readdirSync(dir)]).toEqual([true, "", ["postcopy.prom"]]);
    expect(statSync(`${dir}/postcopy.prom`).uid).toBe(0);
    expect(readFileSync(`${dir}/postcopy.prom`, "utf8")).toContain('user="nobody"');
  });

  test.skipIf(!isRoot || unprivileged !== "0")("--user nobody answers exactly as a process started as nobody", () => {
    const strip = (r: Report) =>
      JSON.stringify({
        ...r,
        roundTrip: undefined,
        checks: r.checks.map(({ detail, trips, ...c }) => ({ ...c, detail: detail.replace(/\d+ µs/g, "") })),
      });
    const viaUser = cli(["--json", "--user", "nobody"], { path: pathWith(QEMU7) });
    const viaSetpriv = cli(["--json"], { nobody: true, path: pathWith(QEMU7) });
    expect(viaUser.code).toBe(viaSetpriv.code);
    const asked = strip(viaSetpriv.report).replace(
      "probing as nobody (uid 65534)",
      "probing as nobody (uid 65534), as --user asked",
    );
    expect(strip(viaUser.report)).toBe(asked);
  });

  test.skipIf(!isRoot)(
    "an unknown --user, and one whose passwd entry is unsound, give the error document and exit 2",
    () => {
      const unknown = cli(["--json", "--user", "no-such-user"]);
      expect([unknown.code, unknown.report.error]).toEqual([2, 'Unknown user "no-such-user": not in /etc/passwd']);
      writeFileSync(
        `${world}/passwd-bad`,
        "root:x:0:0::/root:/bin/sh\nhollow:x::100::/:/bin/sh\nhuge:x:99999999999:1::/:/bin/sh\n",
      );
      const prefix = inNamespace(`mount --bind ${world}/passwd-bad /etc/passwd && exec "$@"`).concat(["sh"]);
      for (const who of ["hollow", "huge", ""]) {
        const run = cli(["--json", "--user", who], { prefix });
        const error = who
          ? `User "${who}" has no sound uid and gid in /etc/passwd`
          : 'Invalid user "": give a name or a uid';
        expect([who, run.code, run.report.error]).toEqual([who, 2, error]);
      }
    },
  );

  test.skipIf(!isRoot)(
    "a child killed by a signal (the OOM killer) is exit 2 with why, and --output says up 0",
    async () => {
      const output = `${world}/killed.prom`;
      writeFileSync(output, "postcopy_probe_up 1\n");
      const args = ["--user", "nobody", "--bench", "200000", "--format", "prometheus", "--output", output];
      const parent = Bun.spawn([`${world}/bun`, `${world}/probe.ts`, ...args], { stdio: ["ignore", "ignore", "pipe"] });
      const child = async () =>
        pids().find((p) => procOf(p, "stat").split(") ")[1]?.split(" ")[1] === String(parent.pid));
      let pid: string | undefined;
      for (let i = 0; i < 500 && !(pid = await child()); i++) await Bun.sleep(10);
      await Bun.sleep(300);
      process.kill(Number(pid), "SIGKILL");
      expect(await parent.exited).toBe(2);
      expect(await new Response(parent.stderr).text()).toBe(
        "postcopy-probe: The probe's child was killed by SIGKILL: no report\n",
      );
      expect(readFileSync(output, "utf8")).toContain("\npostcopy_probe_up 0\n");
    },
  );

  test.skipIf(!isRoot)("--user with stdout closed is exit 2, said on stderr: never a silent 0", () => {
    const run = Bun.spawnSync(["/bin/sh", "-c", `exec 1>&- && exec ${world}/bun ${world}/probe.ts --user nobody`]);
    expect([run.exitCode, run.stderr.toString()]).toEqual([
      2,
      "postcopy-probe: Cannot write the report: stdout is closed\n",
    ]);
  });

  test.skipIf(!isRoot)("--user refuses a caller that is not root", () => {
    const run = cli(["--user", "root"], { nobody: true });
    expect([run.code, run.stderr.split("\n")[0]]).toEqual([2, "postcopy-probe: --user needs root: this is uid 65534"]);
  });

  test.skipIf(!isRoot || unprivileged !== "0")(
    "the variable that marks the --user child changes nothing when set by hand, and an orphaned child ends",
    () => {
      const spoofed = cli(["--json", "--user", "nobody"], {
        env: { POSTCOPY_PROBE_PARENT: "1" },
        path: pathWith(QEMU7),
      });
      expect([spoofed.code, spoofed.report.host.user, spoofed.report.postcopy]).toEqual([1, "nobody", false]);
      const alone = cli(["--json"], { env: { POSTCOPY_PROBE_PARENT: String(process.pid) }, path: pathWith(QEMU7) });
      expect([alone.code, alone.report.host.user]).toEqual([0, "root"]);
      // A child whose parent died before it could tell names a process that is gone: it ends, starting nothing.
      const gone = Bun.spawnSync(["/bin/true"]).pid;
      const orphan = cli(["--json", "--user", "nobody"], { env: { POSTCOPY_PROBE_PARENT: String(gone) } });
      expect([orphan.code, orphan.report.error, orphan.stderr]).toEqual([
        2,
        "The parent probe is gone",
        "postcopy-probe: The parent probe is gone\n",
      ]);
    },
  );

  test.skipIf(!isRoot)(
    "the --user child dies with its parent, and signals to the parent reach it",
    async () => {
      const find = (parent: number) =>
        Number(
          readdirSync("/proc").find((p) => {
            try {
              return readFileSync(`/proc/${p}/environ`, "latin1").includes(`POSTCOPY_PROBE_PARENT=${parent}\0`);
            } catch {
              return false;
            }
          }),
        );
      for (const signal of ["SIGKILL", "SIGTERM"] as const) {
        const parent = Bun.spawn([`${world}/bun`, `${world}/probe.ts`, "--user", "nobody", "--bench", "40000"], {
          stdio: ["ignore", "ignore", "ignore"],
        });
        let child = 0;
        for (let i = 0; i < 300 && !child; i++) {
          await Bun.sleep(30);
          child = find(parent.pid);
        }
        expect(child).toBeGreaterThan(0);
        parent.kill(signal);
        await parent.exited;
        // Bounded generously: on a loaded host the child may still be starting when its parent goes.
        for (let i = 0; i < 500 && existsSync(`/proc/${child}/status`); i++) await Bun.sleep(20);
        const state = existsSync(`/proc/${child}/status`)
          ? readFileSync(`/proc/${child}/status`, "latin1")
          : "State:\tgone";
        expect([signal, /State:\s+(Z|gone)/.test(state)]).toEqual([signal, true]);
      }
    },
    30_000,
  );
});

describe("--pid (vm.ts): a VM's command line, for devices this machine has not got", () => {
  // VFIO needs a device to pass through and vhost-user a backend that speaks its protocol: neither is here.
  const vm = (cmdline: string[], vmLckKb: number | null = 0) =>
    configChecks({ cmdline, vmLckKb, cwd: "/", mounts: [], files: () => [], walk: () => ({ type: null, how: "" }) });
  const QEMU = ["qemu-system-x86_64", "-machine", "pc"];

  test("vm-config: VFIO fails with QEMU's message; vhost-user warns naming each backend's socket, in both syntaxes", () => {
    const { checks } = vm([
      ...[...QEMU, "-device", '{"driver":"vfio-pci","host":"0000:01:00.0","id":"hostdev0"}'],
      ...["-chardev", "socket,id=charnet0,path=/run/vhost/net0.sock", "-netdev", "vhost-user,id=net0,chardev=charnet0"],
      ...[
        "-chardev",
        "socket,id=fs0,path=/run/virtiofsd.sock",
        "-device",
        '{"driver":"vhost-user-fs-pci","chardev":"fs0"}',
      ],
    ]);
    expect(checks[1]).toMatchObject({
      id: "vm-devices",
      status: "fail",
      detail:
        'vfio: "VFIO migration is not supported with postcopy migration" (QEMU 8.2+; before, VFIO blocks migration); ' +
        "vhost-user-fs-pci (socket /run/virtiofsd.sock), netdev net0 (socket /run/vhost/net0.sock): the backend must " +
        'offer VHOST_USER_PROTOCOL_F_PAGEFAULT, else "vhost-user backend not capable of postcopy"',
    });
  });

  test("virtio-mem passes (QEMU 7.2 and 10 migrate with it); locked memory is a note, since QEMU unlocks it", () => {
    const { checks, needs } = vm(
      [...QEMU, "-object", "memory-backend-ram,id=vmem0,size=1G", "-device", "virtio-mem-pci,memdev=vmem0"],
      2048,
    );
    expect(checks.map((c) => [c.id, c.status, c.detail])).toEqual([
      [
        "vm-memory",
        "pass",
        "anonymous RAM; memory locked (VmLck 2048 kB): QEMU unlocks it for postcopy, then locks it again",
      ],
      ["vm-devices", "pass", "devices: 1, none that refuses postcopy"],
    ]);
    expect(needs).toEqual([]);
    const asked = vm([...QEMU, "-overcommit", "mem-lock=on", "-object", "memory-backend-memfd,id=m,size=1G"], null);
    expect([asked.checks[0].detail, asked.needs]).toEqual([
      "shared memory (memfd or share=on); memory locked (VmLck unknown kB): QEMU unlocks it for postcopy, then locks it again",
      ["postcopy-shmem"],
    ]);
  });
});

describe("--pid (context.ts): this VM, in its QEMU's own context, judged as that QEMU judges it", () => {
  const skip = !isRoot || !realQemu;
  const nobody = ["/usr/bin/setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"];
  const byPid = (pid: number) => cli(["--json", "--pid", String(pid)]);

  test.skipIf(skip)("as root: the probe and that QEMU both say yes", async () => {
    await withQemu(realQemu!, [], [], async (pid, ask) => {
      const { code, report } = byPid(pid);
      expect([await ask(), code, report.postcopy]).toEqual(["yes", 0, true]);
      expect(check(report, "context")).toMatchObject({ status: "pass" });
      expect(check(report, "context").detail).toStartWith(`qemu-system-x86[${pid}] runs as root (uid 0), QEMU `);
      expect([report.context?.pid, report.context?.user]).toEqual([pid, "root"]);
    });
  });

  test.skipIf(skip || unprivileged !== "0")(
    "unprivileged-userfaultfd: as uid 65534 the probe and that QEMU both say no, for the sysctl",
    async () => {
      await withQemu(realQemu!, nobody, [], async (pid, ask) => {
        const { code, report } = byPid(pid);
        expect([(await ask()).startsWith("no: Postcopy is not supported"), code, report.postcopy]).toEqual([
          true,
          1,
          false,
        ]);
        expect([report.host.user, causes(report)]).toEqual([
          "nobody",
          expect.arrayContaining(["unprivileged-userfaultfd"]),
        ]);
      });
    },
  );

  test.skipIf(skip || unprivileged !== "0")(
    "user-namespace: a QEMU in a user namespace of its own has CAP_SYS_PTRACE only there: no, as QEMU says",
    async () => {
      for (const prefix of [
        ["/usr/bin/unshare", "-Ur"],
        [...nobody, "/usr/bin/unshare", "-Ur"],
      ]) {
        await withQemu(realQemu!, prefix, [], async (pid, ask) => {
          const { code, report } = byPid(pid);
          expect([(await ask()).startsWith("no: Postcopy is not supported"), code, report.postcopy]).toEqual([
            true,
            1,
            false,
          ]);
          const cause = report.diagnosis.find((d) => d.cause === "user-namespace");
          expect([causes(report).includes("unprivileged-userfaultfd"), cause?.evidence[0]]).toEqual([
            false,
            expect.stringMatching(/^uid_map: 0 (0|65534) 1 \(the initial user namespace has 0 0 4294967295\)$/),
          ]);
          expect(cause?.blocks).toContain("postcopy-ram");
        });
      }
    },
    20_000,
  );

  test.skipIf(skip)(
    "devnode-missing: in a mount namespace whose /dev lacks userfaultfd, the syscall serves",
    async () => {
      const dev = `${world}/private-dev`;
      mkdirSync(dev, { recursive: true });
      const nodes = ["null c 1 3", "zero c 1 5", "urandom c 1 9"]
        .map((n) => `mknod -m 666 ${dev}/${n.replace(" ", " ")}`)
        .join(" && ");
      const prefix = inNamespace(
        `mount -t tmpfs none ${dev} && ${nodes} && mount --bind ${dev} /dev && exec "$@"`,
      ).concat(["sh"]);
      await withQemu(realQemu!, prefix, [], async (pid, ask) => {
        const { code, report } = byPid(pid);
        expect(check(report, "uffd-open").routes).toMatchObject({ "device-node": "ENOENT", syscall: "ok" });
        expect(report.context?.ownMountNamespace).toBe(true);
        expect([await ask(), code, report.postcopy]).toEqual(["yes", 0, true]);
      });
    },
  );

  test.skipIf(skip || !existsSync("/sys/fs/cgroup/devices") || facts.miscMinor === null)(
    "device-cgroup: in a devices cgroup that denies the minor, the probe joins it and sees what QEMU sees",
    async () => {
      const cgroup = `/sys/fs/cgroup/devices/postcopy-probe-qemu-${process.pid}`;
      mkdirSync(cgroup);
      try {
        writeFileSync(`${cgroup}/devices.deny`, `c 10:${facts.miscMinor} rwm`);
        const prefix = ["/bin/sh", "-c", `echo $$ > ${cgroup}/cgroup.procs && exec "$@"`, "sh"];
        await withQemu(realQemu!, prefix, [], async (pid, ask) => {
          const { code, report } = byPid(pid);
          expect(check(report, "uffd-open").routes).toMatchObject({ "device-node": "EPERM", syscall: "ok" });
          expect(causes(report)).toContain("device-cgroup");
          expect([await ask(), code, report.postcopy]).toEqual(["yes", 0, true]);
        });
        // The probe's child left with the process: only QEMU was ever in it, and it is gone.
        expect(readFileSync(`${cgroup}/cgroup.procs`, "utf8")).toBe("");
      } finally {
        rmdirSync(cgroup);
      }
    },
  );

  test.skipIf(skip)(
    "seccomp: under a hand-written filter (its child's, inherited): the probe reads it and says no, as QEMU 7.2 does",
    async () => {
      const prefix = [`${world}/bun`, seccompScript("EPERM").replace("seccomp-EPERM.ts", "exec-under-seccomp.ts")];
      writeFileSync(
        prefix[1],
        readFileSync(seccompScript("EPERM"), "utf8").replace(
          "main(process.argv.slice(2));",
          "Bun.spawnSync(process.argv.slice(2), { stdio: ['inherit', 'inherit', 'inherit'] });",
        ),
      );
      await withQemu(realQemu!, prefix, [], async (pid, ask) => {
        const { code, report } = byPid(pid);
        expect((await ask()).startsWith("no:")).toBe(true);
        expect(check(report, "context")).toMatchObject({ status: "pass" });
        expect(check(report, "context").detail).toEndWith(
          "; seccomp filters of 6 instructions, read and run for each route",
        );
        expect([code, report.postcopy, report.error]).toEqual([1, false, undefined]);
        expect(report.diagnosis.find((d) => d.cause === "seccomp")?.evidence).toEqual([
          "userfaultfd(O_CLOEXEC): SECCOMP_RET_ERRNO(EPERM), filter 1 of 1, 6 instructions",
          "userfaultfd(UFFD_USER_MODE_ONLY): SECCOMP_RET_ERRNO(EPERM), filter 1 of 1, 6 instructions",
        ]);
      });
    },
  );

  test.skipIf(skip)(
    "vm-config: file-backed RAM on ext4: QEMU 7.2 accepts, the migration then fails, and the probe says no",
    async () => {
      const file = (side: string) => [
        "-object",
        `memory-backend-file,id=m0,size=64M,mem-path=${world}/ram-${side},share=on`,
        "-machine",
        "memory-backend=m0",
      ];
      await withQemu(realQemu!, [], file("probed"), async (pid, ask) => {
        const { code, report } = byPid(pid);
        expect([await ask(), code, report.postcopy]).toEqual(["yes", 1, false]);
        expect(check(report, "vm-memory").detail).toContain('"Host backend files need to be TMPFS or HUGETLBFS only"');
        expect(causes(report)).toContain("vm-config");
      });
      expect(await migrate(realQemu!, file)).toBe("postcopy-paused");
    },
    30000,
  );

  test.skipIf(skip)(
    "file-backed RAM on /dev/shm, in libvirt's JSON syntax: yes, and a migration completes",
    async () => {
      const shm = (side: string) => [
        "-object",
        JSON.stringify({
          "qom-type": "memory-backend-file",
          id: "m0",
          size: 64 << 20,
          "mem-path": `/dev/shm/postcopy-probe-${process.pid}-${side}`,
          share: true,
        }),
        "-machine",
        "memory-backend=m0",
      ];
      try {
        await withQemu(realQemu!, [], shm("probed"), async (pid, ask) => {
          const { code, report } = byPid(pid);
          expect([await ask(), code, report.postcopy, check(report, "vm-memory").status]).toEqual([
            "yes",
            0,
            true,
            "pass",
          ]);
        });
        expect(await migrate(realQemu!, shm)).toBe("completed");
      } finally {
        for (const side of ["probed", "src", "dst"])
          rmSync(`/dev/shm/postcopy-probe-${process.pid}-${side}`, { force: true });
      }
    },
    30000,
  );

  test.skipIf(skip)("virtio-balloon free-page-hint: QEMU accepts, the probe warns and says yes", async () => {
    const args = ["-object", "iothread,id=io0", "-device", "virtio-balloon-pci,free-page-hint=on,iothread=io0"];
    await withQemu(realQemu!, [], args, async (pid, ask) => {
      const { code, report } = byPid(pid);
      expect([await ask(), code, report.postcopy, check(report, "vm-devices").status]).toEqual([
        "yes",
        0,
        true,
        "warn",
      ]);
    });
  });
});

describe("--pid (context.ts) against a hostile target: what it names is never run, opened on the host, or shown raw", () => {
  const skip = !isRoot || !cc;
  const byPid = (pid: number, more: string[] = []) => cli(["--json", "--pid", String(pid), ...more]);

  test.skipIf(skip)(
    "--migrate of a QEMU whose binary was replaced since it started (an upgrade) says so, and runs nothing",
    async () => {
      const dir = mkdtempSync(`${world}/replaced-`);
      chmodSync(dir, 0o755);
      copyFileSync(standIn("qemu-system-x86_64"), `${dir}/qemu-system-x86_64`);
      await withTarget([`${dir}/qemu-system-x86_64`], {}, (pid) => {
        rmSync(`${dir}/qemu-system-x86_64`);
        copyFileSync(standIn("qemu-system-x86_64"), `${dir}/qemu-system-x86_64`);
        const { code, report } = byPid(pid, ["--migrate"]);
        expect([code, report.migration?.ok, report.migration?.why]).toEqual([
          2,
          null,
          `${dir}/qemu-system-x86_64, which process ${pid} runs, was replaced or removed since it started (an upgrade?): the probe runs only the file the process runs`,
        ]);
      });
    },
  );

  test.skipIf(skip || facts.miscMinor === null)(
    "a QEMU with no supplementary groups (an empty Groups: line) is answered with none, never the next line's",
    async () => {
      const q = standIn("qemu-system-x86_64", ["-static", '-DVERSION="10.0.0"']);
      const nobody = ["/usr/bin/setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"];
      // /dev/userfaultfd root:root 0660 in its mount namespace: a group of root's would open it, QEMU cannot.
      await withTarget([q], { prefix: [...deviceOpenTo("0660"), ...nobody] }, (pid) => {
        expect(procOf(String(pid), "status")).toMatch(/^Groups:\s*\n/m);
        const { report } = byPid(pid);
        const context = (report as unknown as { context: { groups: number[] } }).context;
        expect([context.groups, routesOf(report)["device-node"]]).toEqual([[], "EACCES"]);
        if (unprivileged === "0") expect(report.postcopy).toBe(false);
      });
    },
  );

  test.skipIf(!isRoot)(
    "a kernel thread, a shell, the probe itself and a pid that is gone are exit 2, each saying so",
    () => {
      const kthread = cli(["--json", "--pid", "2"]);
      expect([kthread.code, kthread.report.error]).toEqual([2, "Process 2 (kthreadd) is a kernel thread, not a QEMU"]);
      const self = Bun.spawnSync(["/bin/sh", "-c", `exec ${world}/bun ${world}/probe.ts --json --pid $$`], {
        cwd: world,
      });
      expect([self.exitCode, JSON.parse(self.stdout.toString()).error]).toEqual([
        2,
        expect.stringMatching(/^Process \d+ \(bun\) is the probe itself, not a QEMU$/),
      ]);
      const runner = cli(["--json", "--pid", String(process.pid)]);
      expect([runner.code, runner.report.error]).toEqual([
        2,
        `Process ${process.pid} (bun) is not a QEMU: it runs ${process.execPath}`,
      ]);
      const gone = cli(["--json", "--pid", "4194000"]);
      expect([gone.code, gone.report.error]).toEqual([2, "No process 4194000: /proc/4194000 is gone or unreadable"]);
    },
  );

  test.skipIf(skip)(
    "a QEMU whose version cannot be read still has its VM judged (either spelling), and the run is exit 2",
    async () => {
      const q = standIn("qemu-system-x86_64", ["-static", "-DNO_VERSION"]);
      await withTarget([q, "--device", "vfio-pci,host=0000:01:00.0", "-m", "64"], {}, (pid) => {
        const { code, report } = byPid(pid);
        expect([code, report.postcopy, check(report, "vm-devices").status]).toEqual([2, null, "fail"]);
        expect(report.error).toBe(
          `could not answer what was asked: --pid: ${q}: no QEMU version could be read from its binary`,
        );
      });
    },
  );

  test.skipIf(skip)(
    "a loader's QEMU is the program ld.so runs, read from its bytes: never an argument, never run, never a hang",
    async () => {
      const loader = "/lib64/ld-linux-x86-64.so.2";
      const dir = mkdtempSync(`${world}/loaded-`);
      chmodSync(dir, 0o755);
      const program = `${dir}/qemu-system-x86_64`;
      copyFileSync(standIn("qemu-system-x86_64", []), program); // ld.so runs a static program itself
      chmodSync(program, 0o755);
      // A tenant's script whose name says qemu, as an argument: the old probe ran it, as root.
      const evil = `${dir}/qemu-evil`;
      writeFileSync(evil, `#!/bin/sh\nid > ${dir}/RAN\n`, { mode: 0o755 });
      const as65534 = ["/usr/bin/setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"];
      await withTarget(
        [loader, "--library-path", "/nonexistent", program, evil],
        { prefix: as65534, comm: "ld-linux-x86-64" },
        (pid) => {
          const { report } = byPid(pid);
          expect([report.qemu ?? null, check(report, "context").detail]).toEqual([
            null,
            expect.stringContaining("runs as nobody (uid 65534), QEMU 7.2.0"),
          ]);
          // Then the tenant swaps the program's file for what would run, block, spin or take long to read.
          const swaps: Array<[string, () => void]> = [
            ["a script", () => writeFileSync(program, `#!/bin/sh\nid > ${dir}/RAN\n`, { mode: 0o755 })],
            ["a FIFO", () => Bun.spawnSync(["mkfifo", program])],
            ["/dev/zero", () => symlinkSync("/dev/zero", program)],
            ["a 16 GiB sparse file", () => Bun.spawnSync(["truncate", "-s", "16G", program])],
          ];
          // What it names is not what it runs: the program it maps is no longer that file.
          for (const [what, swap] of swaps) {
            rmSync(program, { force: true });
            swap();
            const run = byPid(pid);
            expect([what, run.code, run.report.error]).toEqual([
              what,
              2,
              `Process ${pid} (ld-linux-x86-64) is not a QEMU: its command line names ${program}, which it does not run`,
            ]);
            // And read as a binary, each ends at once: never run, never a wait, never 16 GiB read.
            expect([what, versionIn(sys, program, Date.now() + 5000)]).toEqual([
              what,
              what === "a script" ? "script" : null,
            ]);
          }
        },
      );
      expect([existsSync(`${dir}/RAN`), existsSync(`${dir}/LOADED`)]).toEqual([false, false]);
    },
    20_000,
  );

  /** A chroot of its own for a stand-in: the QEMU at its top, and a /dev the test fills. */
  function chroot() {
    const dir = mkdtempSync(`${world}/chroot-`);
    mkdirSync(`${dir}/dev`);
    copyFileSync(standIn("qemu-system-x86_64"), `${dir}/qemu-system-x86_64`);
    chmodSync(`${dir}/qemu-system-x86_64`, 0o755);
    return dir;
  }
  const strace = Bun.which("strace");

  test.skipIf(skip || facts.miscMinor === null)(
    "devnode-impostor and devnode-missing: /dev/userfaultfd is resolved inside the target's root, never opened when it is not the device",
    async () => {
      const dir = chroot();
      const node = `${dir}/dev/userfaultfd`;
      await withTarget(["/usr/sbin/chroot", dir, "/qemu-system-x86_64"], { comm: "qemu-system-x86" }, (pid) => {
        const routes = () => {
          const { code, report } = byPid(pid);
          return [code, routesOf(report)["device-node"], blocked(report).filter(([, b]) => b.length)];
        };
        // Links that would reach the host's /etc/passwd: inside this root there is no such file.
        for (const target of ["/etc/passwd", "../../../../../../etc/passwd"]) {
          rmSync(node, { force: true });
          symlinkSync(target, node);
          expect([target, ...routes()]).toEqual([target, 0, "ENOENT", []]);
        }
        if (strace) {
          const rw = traceOpens([`${world}/bun`, `${world}/probe.ts`, "--pid", String(pid)]).opens.filter((l) =>
            l.includes("O_RDWR"),
          );
          expect(rw.filter((l) => /passwd|userfaultfd/.test(l))).toEqual([]);
        }
        // Something else at the device's path: named, never opened (a FIFO would block an open).
        rmSync(node);
        Bun.spawnSync(["mknod", "-m", "666", node, "c", "1", "3"]);
        const other = byPid(pid);
        expect([routesOf(other.report)["device-node"], other.report.diagnosis[0]]).toEqual([
          "ENODEV",
          {
            cause: "devnode-impostor",
            summary: "/dev/userfaultfd is not the userfaultfd device: the probe did not open it",
            blocks: ["firecracker-uffd"],
            evidence: [`/dev/userfaultfd: crw-rw-rw-, c 1:3, not c 10:${facts.miscMinor}`],
            // Its /dev is its own: no fix replaces the host's node (rm && mknod, pasted on the host, would).
            fix: ["docker run --device /dev/userfaultfd ...   # a container: or podman run --device"],
          },
        ]);
        rmSync(node);
        Bun.spawnSync(["mkfifo", node]);
        expect(byPid(pid).report.diagnosis[0].evidence).toEqual([
          `/dev/userfaultfd: prw-r--r--, a FIFO, not c 10:${facts.miscMinor}`,
        ]);
        rmSync(node);
        Bun.spawnSync(["mknod", "-m", "600", node, "c", "10", String(facts.miscMinor)]);
        expect(routes()).toEqual([0, "ok", []]);
      });
    },
    20_000,
  );

  /** A program that mounts FUSE (fuse.NAME) at argv[1] and dies with its parent; then `serve` runs, with the fd. */
  const fuseServer = (name: string, serve: string) => `#include <errno.h>
#include <fcntl.h>
#include <linux/fuse.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <unistd.h>
int main(int argc, char **argv) {
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  int fd = open("/dev/fuse", O_RDWR);
  char opts[128];
  snprintf(opts, sizeof opts, "fd=%d,rootmode=40755,user_id=0,group_id=0,allow_other", fd);
  if (fd < 0 || mount("${name}", argv[1], "fuse.${name}", 0, opts)) return 1;
${serve}
}`;
  /** A FUSE mount whose daemon never answers: any look inside it would hang. Gone with its namespace. */
  const STUCK_FUSE = fuseServer("stuck", "  pause();");
  /**
   * A FUSE server that answers INIT (and ACCESS, with ENOSYS: a chroot into it then works) and nothing
   * else: any other request, a LOOKUP first, waits for ever. It logs the opcode of each request it reads.
   */
  const ANSWERING_FUSE = fuseServer(
    "answering",
    `  FILE *log = fopen(argv[2], "w");
  static char buf[1 << 20];
  for (;;) {
    ssize_t n = read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return 0;
    struct fuse_in_header *in = (void *)buf;
    fprintf(log, "%u\\n", in->opcode);
    fflush(log);
    struct { struct fuse_out_header h; struct fuse_init_out o; } out;
    memset(&out, 0, sizeof out);
    out.h.unique = in->unique;
    if (in->opcode == FUSE_INIT) {
      out.o.major = FUSE_KERNEL_VERSION;
      out.o.minor = FUSE_KERNEL_MINOR_VERSION;
      out.o.max_readahead = ((struct fuse_init_in *)(in + 1))->max_readahead;
      out.o.max_write = 4096;
      out.h.len = sizeof out;
      write(fd, &out, sizeof out);
    } else if (in->opcode == FUSE_ACCESS) {
      out.h.error = -ENOSYS;
      out.h.len = sizeof out.h;
      write(fd, &out.h, sizeof out.h);
    }
  }`,
  );
  const memoryOf = (r: Report) => [check(r, "vm-memory").status, check(r, "vm-memory").detail];

  test.skipIf(skip || !existsSync("/dev/fuse"))(
    "vm-config: a mem-path is judged from the target's own view: the RAM file it holds, its root, never FUSE",
    async () => {
      const q = standIn("qemu-system-x86_64");
      const fuse = `${world}/fuse`;
      mkdirSync(fuse, { recursive: true });
      writeFileSync(`${world}/stuck-fuse.c`, STUCK_FUSE);
      Bun.spawnSync([cc!, "-o", `${world}/stuck-fuse`, `${world}/stuck-fuse.c`]);
      const mounted = `${world}/stuck-fuse ${fuse} & while ! grep -q fuse.stuck /proc/self/mountinfo; do sleep 0.01; done; exec "$@"`;
      const prefix = [...inNamespace(mounted), "sh"];
      const file = (path: string) => ["-object", `memory-backend-file,id=m0,size=64M,mem-path=${path}`];
      await withTarget([q, ...file(`${fuse}/ram`)], { prefix }, (pid) => {
        const { code, report } = byPid(pid);
        expect([code, ...memoryOf(report)]).toEqual([
          2,
          "skip",
          `could not tell what mem-path ${fuse}/ram is on: it lies under the fuse.stuck mount at ${fuse}, which the probe does not enter`,
        ]);
        expect(report.error).toStartWith("could not answer what was asked: postcopy-ram: could not tell what mem-path");
      });
      await withTarget([q, "--mem-path", fuse], { prefix }, (pid) => {
        const { code, report } = byPid(pid);
        expect([code, report.postcopy, ...memoryOf(report)]).toEqual([
          1,
          false,
          "fail",
          `mem-path ${fuse} is on fuse.stuck (by its path in the process's root): "Host backend files need to be TMPFS or HUGETLBFS only" (QEMU 8.1+ refuses; before 8.1 postcopy starts, then fails)`,
        ]);
      });
      // An overlay whose layers are not under the FUSE mount is looked into (onFuse() below for one that is).
      const layers = `${world}/layers`;
      mkdirSync(layers, { recursive: true });
      const overlay = `mount -t tmpfs none ${layers} && mkdir ${layers}/l ${layers}/u ${layers}/w ${layers}/m && mount -t overlay none -o lowerdir=${layers}/l,upperdir=${layers}/u,workdir=${layers}/w ${layers}/m && touch ${layers}/m/ram`;
      const stacked = [...inNamespace(`${overlay} && ${mounted}`), "sh"];
      // A kernel booted without its modules (the booted test kernels) has no overlay to mount.
      const hasOverlay = Bun.spawnSync(inNamespace(overlay)).exitCode === 0;
      if (hasOverlay)
        await withTarget([q, "-mem-path", `${layers}/m/ram`], { prefix: stacked }, (pid) => {
          expect(memoryOf(byPid(pid).report)).toEqual([
            "fail",
            `mem-path ${layers}/m/ram is on overlay (by its path in the process's root): "Host backend files need to be TMPFS or HUGETLBFS only" (QEMU 8.1+ refuses; before 8.1 postcopy starts, then fails)`,
          ]);
        });
      // A relative mem-path is the target's cwd's; a link to /dev/shm is followed inside its root.
      const ram = `/dev/shm/postcopy-probe-${process.pid}`;
      writeFileSync(ram, "");
      symlinkSync(ram, `${world}/ram-link`);
      try {
        await withTarget([q, "-mem-path", "ram-link"], { cwd: world }, (pid) => {
          expect(memoryOf(byPid(pid).report)).toEqual(["pass", "file-backed RAM on tmpfs or hugetlbfs: ram-link"]);
        });
        await withTarget([q, ...file(ram), "-hold", ram], {}, (pid) => {
          const { code, report } = byPid(pid);
          expect([code, report.postcopy, ...memoryOf(report)]).toEqual([
            0,
            true,
            "pass",
            `file-backed RAM on tmpfs or hugetlbfs: ${ram}`,
          ]);
        });
      } finally {
        rmSync(ram, { force: true });
      }
    },
    60_000,
  );

  test.skipIf(skip)(
    "nothing a target wrote reaches the terminal raw: control characters are shown escaped",
    async () => {
      const q = standIn("qemu-system-x86_64");
      const forged = "Postcopy live migration (QEMU 7.2.0 postcopy-ram): SUPPORTED for root (uid 0)";
      const path = `/x\x1b[2K\r${forged}\n\x9b31m`;
      await withTarget([q, "-mem-path", path], {}, (pid) => {
        const human = cli(["--pid", String(pid)]).stdout;
        expect(human.replaceAll("\n", "")).not.toMatch(/\p{Cc}/u);
        const verdicts = human.split("\n").filter((l) => l.startsWith("Postcopy live migration"));
        const unknown = "Postcopy live migration (QEMU 7.2.0 postcopy-ram): UNKNOWN for root (uid 0): postcopy-ram: ";
        expect([
          verdicts.length,
          verdicts[0].startsWith(`${unknown}could not tell what mem-path /x\\x1b[2K\\r`),
        ]).toEqual([1, true]);
        // U+009B (a CSI to a UTF-8 terminal) arrives as its UTF-8 bytes, c2 9b: each is shown, 9b as an escape.
        expect(human).toContain(`mem-path /x\\x1b[2K\\r${forged}\\n\u00c2\\x9b31m`);
        // JSON keeps the characters, escaped as JSON escapes them.
        expect(byPid(pid).stdout).toContain("mem-path /x\\u001b[2K\\r");
      });
      // Bidirectional overrides and line separators arrive in QEMU's JSON syntax: shown escaped too.
      const json = '{"qom-type": "memory-backend-file", "id": "m", "mem-path": "/a\\u202eb\\u2028c"}';
      await withTarget([q, "-object", json], {}, (pid) => {
        const human = cli(["--pid", String(pid)]).stdout;
        expect(human).not.toMatch(/[\u202e\u2028]/);
        expect(human).toContain("mem-path /a\\u{202e}b\\u{2028}c");
      });
    },
  );

  test.skipIf(skip)(
    "the child is its target's user yet not its target's to trace: not dumpable, no terminal, no root environment",
    async () => {
      const q = standIn("qemu-system-x86_64");
      const nobody = ["/usr/bin/setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"];
      await withTarget([q], { prefix: nobody }, async (pid) => {
        const env = { ...process.env, NO_COLOR: "1", ROOTS_SECRET: "s.root-only" };
        const parent = Bun.spawn([`${world}/bun`, `${world}/probe.ts`, "--pid", String(pid), "--bench", "40000"], {
          env,
          stdio: ["ignore", "ignore", "ignore"],
        });
        try {
          let child = 0;
          for (let i = 0; i < 300 && !child; i++) {
            await Bun.sleep(20);
            child = Number(
              pids().find((p) => procOf(p, "status").includes("\nUid:\t65534") && cmdlineOf(p).includes("--bench")),
            );
          }
          expect(child).toBeGreaterThan(0);
          const environ = readFileSync(`/proc/${child}/environ`, "latin1");
          expect([environ.includes("ROOTS_SECRET"), environ.includes(`POSTCOPY_PROBE_PARENT=${parent.pid}`)]).toEqual([
            false,
            true,
          ]);
          // As the target's own user: no environment to read, nothing to attach to.
          const peek = Bun.spawnSync([...nobody, "/bin/cat", `/proc/${child}/environ`]);
          expect([peek.exitCode, peek.stderr.toString()]).toEqual([
            1,
            `/bin/cat: /proc/${child}/environ: Permission denied\n`,
          ]);
          const stat = readFileSync(`/proc/${child}/stat`, "latin1")
            .replace(/^.*\) /s, "")
            .split(" ");
          expect([stat[3], stat[4]]).toEqual([String(child), "0"]); // a session of its own, no controlling terminal
        } finally {
          parent.kill("SIGKILL");
          await parent.exited;
        }
      });
    },
    20_000,
  );

  test.skipIf(skip || !existsSync("/dev/fuse"))(
    "devnode-impostor: a /dev on a FUSE mount that never answers is not looked into, and the run ends",
    async () => {
      const q = standIn("qemu-system-x86_64");
      writeFileSync(`${world}/stuck-fuse-dev.c`, STUCK_FUSE);
      Bun.spawnSync([cc!, "-o", `${world}/stuck-fuse-dev`, `${world}/stuck-fuse-dev.c`]);
      const mounted = `${world}/stuck-fuse-dev /dev & while ! grep -q fuse.stuck /proc/self/mountinfo; do sleep 0.01; done; exec "$@"`;
      await withTarget([q], { prefix: [...inNamespace(mounted), "sh"] }, (pid) => {
        const { code, report } = byPid(pid);
        expect([code, routesOf(report)["device-node"], report.diagnosis[0]]).toEqual([
          0,
          "ENODEV",
          expect.objectContaining({
            cause: "devnode-impostor",
            blocks: ["firecracker-uffd"],
            evidence: ["/dev/userfaultfd: behind FUSE (which may never answer), or a mount the probe cannot place"],
          }),
        ]);
      });
    },
    20_000,
  );

  test.skipIf(skip)(
    "vm-config: a relative mem-path of a QEMU chrooted with its cwd at its root is looked up inside that root",
    async () => {
      const dir = chroot();
      writeFileSync(`${dir}/ram`, "");
      const type = Bun.spawnSync(["findmnt", "-n", "-o", "FSTYPE", "--target", dir]).stdout.toString().trim();
      const refused = `"Host backend files need to be TMPFS or HUGETLBFS only" (QEMU 8.1+ refuses; before 8.1 postcopy starts, then fails)`;
      await withTarget([`${dir}/qemu-system-x86_64`, "-chroot", dir, "-mem-path", "ram"], {}, (pid) => {
        expect(memoryOf(byPid(pid).report)).toEqual(
          ["tmpfs", "hugetlbfs"].includes(type)
            ? ["pass", "file-backed RAM on tmpfs or hugetlbfs: ram"]
            : ["fail", `mem-path ram is on ${type} (by its path in the process's root): ${refused}`],
        );
      });
    },
  );

  test.skipIf(skip || !existsSync("/dev/fuse") || !strace)(
    "devnode-impostor: FUSE mounted after the probe read the mount table, under a freed mount's id, is not looked into",
    async () => {
      const q = standIn("qemu-system-x86_64");
      writeFileSync(`${world}/stuck-fuse-late.c`, STUCK_FUSE);
      Bun.spawnSync([cc!, "-o", `${world}/stuck-fuse-late`, `${world}/stuck-fuse-late.c`]);
      // A /dev of its own, then on a signal that tmpfs unmounted (its id freed) and FUSE mounted there (the id again).
      const signal = `${world}/swap-dev`;
      rmSync(signal, { force: true });
      const swap = `while [ ! -e ${signal} ]; do sleep 0.01; done; umount /dev && exec ${world}/stuck-fuse-late /dev`;
      const script = `mount -t tmpfs none /dev && (${swap}) & exec "$@"`;
      await withTarget([q], { prefix: [...inNamespace(script), "sh"] }, async (pid) => {
        // The probe's openat2() calls wait 3 s each: the swap comes after it read the table, before it resolves.
        const delayed = [
          "-f",
          "-qq",
          "-o",
          "/dev/null",
          "-e",
          "trace=openat2",
          "-e",
          "inject=openat2:delay_enter=3000000",
        ];
        const probe = Bun.spawn(
          [strace!, ...delayed, `${world}/bun`, `${world}/probe.ts`, "--json", "--pid", String(pid)],
          {
            stdout: "pipe",
          },
        );
        await Bun.sleep(1500);
        writeFileSync(signal, "");
        const report = JSON.parse(await new Response(probe.stdout).text()) as Report;
        await probe.exited;
        expect([routesOf(report)["device-node"], report.diagnosis[0].evidence]).toEqual([
          "ENODEV",
          ["/dev/userfaultfd: behind FUSE (which may never answer), or a mount the probe cannot place"],
        ]);
      });
    },
    20_000,
  );

  test.skipIf(skip || !existsSync("/dev/fuse"))(
    "a FUSE mounted over the directory of a running QEMU's binary is not looked into: the run ends",
    () => {
      const dir = mkdtempSync(`${world}/exe-dir-`);
      mkdirSync(`${dir}/q`);
      copyFileSync(standIn("qemu-system-x86_64"), `${dir}/q/qemu-system-x86_64`);
      chmodSync(`${dir}/q/qemu-system-x86_64`, 0o755);
      writeFileSync(`${world}/stuck-fuse-exe.c`, STUCK_FUSE);
      Bun.spawnSync([cc!, "-o", `${world}/stuck-fuse-exe`, `${world}/stuck-fuse-exe.c`]);
      // The QEMU, then FUSE over its directory's parent, then the probe: one mount namespace of their own.
      const out = `${world}/exe-dir.json`;
      const script = [
        `${dir}/q/qemu-system-x86_64 & P=$!`,
        "sleep 0.2",
        `${world}/stuck-fuse-exe ${dir} &`,
        "while ! grep -q fuse.stuck /proc/self/mountinfo; do sleep 0.01; done",
        // Bounded below the test's own bound, so the QEMU is killed whatever the probe does.
        `timeout -s KILL 15 ${world}/bun ${world}/probe.ts --json --pid $P > ${out}`,
        `echo $? > ${out}.rc; kill -9 $P`,
      ].join("\n");
      Bun.spawnSync(inNamespace(script), { cwd: world });
      const report = JSON.parse(readFileSync(out, "utf8")) as Report;
      expect([readFileSync(`${out}.rc`, "utf8").trim(), report.postcopy, report.probe.qemu]).toEqual([
        "0",
        true,
        "QEMU 7.2.0",
      ]);
    },
    30_000,
  );

  test("onFuse(): an overlay is not entered when a layer of it lies under a FUSE mount, or it names none", () => {
    const fuse = [{ point: "/var/lib/lazy" }, { point: "/srv/a b,c" }, { point: "/srv/l:2" }];
    const overlay = (options: string) => onFuse({ options }, fuse);
    expect([
      overlay("rw,lowerdir=/var/lib/docker/l/A:/var/lib/docker/l/B,upperdir=/var/lib/docker/u,workdir=/w"),
      overlay("rw,lowerdir=/var/lib/docker/l/A:/var/lib/lazy/layer7,upperdir=/var/lib/docker/u"),
      overlay("rw,lowerdir+=/var/lib/lazy,upperdir=/u"),
      overlay("rw,upperdir=/var/lib/lazy-not/u"),
      overlay("rw"),
      onFuse({ options: "rw" }, []),
      // mountinfo's escapes: a comma in a path is \054 there, a space \040; data-only layers too.
      overlay(String.raw`rw,lowerdir=/srv/a\040b\054c/l,upperdir=/u`),
      overlay("rw,lowerdir=/l,datadir+=/var/lib/lazy/data"),
      // A colon in a path: escaped in a `lowerdir=` list, as it is in `lowerdir+=`, which names one layer.
      overlay(String.raw`rw,lowerdir=/x:/srv/l\134:2,upperdir=/u`),
      overlay("rw,lowerdir+=/srv/l:2,upperdir=/u"),
      // A relative layer, as its mounter typed it from a directory the probe cannot know.
      overlay("rw,lowerdir=l,upperdir=/u"),
    ]).toEqual([false, true, true, false, true, false, true, true, true, true, true]);
  });

  test.skipIf(skip || !existsSync("/dev/fuse"))(
    "devnode-impostor: a root on FUSE (rootless Podman's fuse-overlayfs) is not looked into, and the run ends",
    async () => {
      const q = standIn("qemu-system-x86_64");
      writeFileSync(`${world}/answering-fuse.c`, ANSWERING_FUSE);
      const built = Bun.spawnSync([cc!, "-o", `${world}/answering-fuse`, `${world}/answering-fuse.c`]);
      expect(built.stderr.toString()).toBe("");
      const [root, log] = [`${world}/fuse-root`, `${world}/fuse-root.log`];
      mkdirSync(root, { recursive: true });
      const mounted = `${world}/answering-fuse ${root} ${log} & while ! grep -q fuse.answering /proc/self/mountinfo; do sleep 0.01; done; exec "$@"`;
      await withTarget([q, "-chroot", root], { prefix: [...inNamespace(mounted), "sh"] }, (pid) => {
        const { code, report } = byPid(pid);
        // Its binary, outside its root on its namespace's copy of a mount of the host's, is placed by its device.
        expect([code, routesOf(report)["device-node"], report.diagnosis[0].evidence, report.probe.qemu]).toEqual([
          0,
          "ENODEV",
          ["/dev/userfaultfd: behind FUSE (which may never answer), or a mount the probe cannot place"],
          "QEMU 7.2.0",
        ]);
      });
      // FUSE_INIT (26) and FUSE_ACCESS (34), the target's chroot: no FUSE_LOOKUP (1), which would never end.
      expect(readFileSync(log, "utf8").split("\n").filter(Boolean)).toEqual(["26", "34"]);
    },
    20_000,
  );

  test.skipIf(skip)(
    "fix lines are safe to paste: a target's values are shell-quoted, and no grant goes to a binary others can write",
    async () => {
      const shellWords = (line: string): string[] => {
        const py =
          "import json,shlex,sys\ns=shlex.shlex(sys.argv[1],posix=True,punctuation_chars=True)\ns.whitespace_split=True\nprint(json.dumps(list(s)))";
        return JSON.parse(Bun.spawnSync(["python3", "-c", py, line]).stdout.toString());
      };
      const hostile = "/tmp/q;touch /tmp/INJECTED;#/qemu-system-x86_64";
      const grantable = { path: hostile, version: "7.2.0", major: 7, ptrace: false, grantable: hostile };
      const f = {
        ...facts,
        kernel: "6.1.0",
        uid: 0,
        user: "root",
        qemuUser: "a b;c",
        unprivilegedUserfaultfd: 0,
        capSysPtrace: false,
        seccomp: 0,
        userNamespace: false,
        tools: ["setfacl", "udevadm", "setcap"],
        miscMinor: 126,
        devnode: { mode: "crw-------", kind: "c 10:126", owner: "root", group: "root", uid: 0, gid: 0 },
        deviceCgroup: { dir: "/sys/fs/cgroup/devices/x'y;z", allows: false },
        sysctlSource: { file: "/etc/sysctl.d/99-zz$(id).conf", value: "0" },
      };
      const routes = { "device-node": "EACCES", device: "EACCES", syscall: "EPERM", "user-mode-only": "ok" };
      const opened = [{ id: "uffd-open", title: "", status: "fail", detail: "", routes } as Check];
      const fixes = diagnoseOf(f, opened, undefined, grantable).flatMap((d) => d.fix);
      const words = Object.fromEntries(fixes.map((x) => [x.split(" ")[0], shellWords(x.split("   #")[0])]));
      expect(words.setcap).toEqual(["setcap", "cap_sys_ptrace+ep", hostile]);
      expect(words.usermod).toEqual(["usermod", "-aG", "kvm", "a b;c"]);
      expect(words.setfacl).toEqual(["setfacl", "-m", "u:a b;c:rw", "/dev/userfaultfd"]);
      expect(fixes).toContain("echo vm.unprivileged_userfaultfd=1 > '/etc/sysctl.d/99-zz$(id).conf-userfaultfd.conf'");
      // The same binary, where others can write it: no setcap is offered at all.
      const owned = diagnoseOf(f, opened, undefined, { ...grantable, grantable: null }).flatMap((d) => d.fix);
      expect(owned.filter((x) => x.startsWith("setcap"))).toEqual([]);
      // A real one, as uid 65534 from a directory under /tmp: its path is quoted where shown, never granted.
      const dir = `${world}/q;touch ${world}/INJECTED;#`;
      mkdirSync(dir, { recursive: true, mode: 0o755 });
      copyFileSync(standIn("qemu-system-x86_64"), `${dir}/qemu-system-x86_64`);
      chmodSync(`${dir}/qemu-system-x86_64`, 0o755);
      const nobody = ["/usr/bin/setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"];
      await withTarget([`${dir}/qemu-system-x86_64`], { prefix: nobody }, (pid) => {
        const { report } = byPid(pid);
        const all = report.diagnosis.flatMap((d) => d.fix);
        if (unprivileged === "0") expect(causes(report)).toContain("unprivileged-userfaultfd");
        expect(all.filter((x) => x.includes("setcap") || x.includes("INJECTED"))).toEqual([]);
      });
      expect(existsSync(`${world}/INJECTED`)).toBe(false);
    },
    30_000,
  );

  test.skipIf(skip)("a command line that cannot be read whole (over 4 MiB) is exit 2, not cut short", async () => {
    const q = standIn("qemu-system-x86_64");
    // 40 arguments of 120 000 bytes, made by a shell whose stack limit lets them through exec.
    const exec = `a=$(head -c 120000 /dev/zero | tr '\\0' x); exec "$0" ${"$a ".repeat(40)}`;
    const prefix = ["/usr/bin/prlimit", `--stack=${64 << 20}`, "/bin/sh", "-c", exec];
    await withTarget([q], { prefix }, (pid) => {
      const { code, report } = byPid(pid);
      expect([code, report.error]).toEqual([
        2,
        `Process ${pid} (qemu-system-x86) : its command line could not be read whole (over 4194304 bytes)`.replace(
          " :",
          ":",
        ),
      ]);
    });
  });

  test.skipIf(skip || !existsSync("/sys/fs/cgroup/unified"))(
    "a target in a frozen cgroup (a paused container) is exit 2 before the probe joins it, and the probe is not frozen",
    async () => {
      const cgroup = `/sys/fs/cgroup/unified/postcopy-probe-frozen-${process.pid}`;
      mkdirSync(cgroup);
      try {
        const prefix = ["/bin/sh", "-c", `echo $$ > ${cgroup}/cgroup.procs && exec "$@"`, "sh"];
        await withTarget([standIn("qemu-system-x86_64")], { prefix }, async (pid) => {
          writeFileSync(`${cgroup}/cgroup.freeze`, "1");
          for (let i = 0; i < 100 && !readFileSync(`${cgroup}/cgroup.events`, "utf8").includes("frozen 1"); i++)
            await Bun.sleep(10);
          const { code, report } = byPid(pid);
          expect([code, report.error]).toEqual([
            2,
            `Process ${pid} (qemu-system-x86) is in a frozen cgroup, ${cgroup} (a paused container?): thaw it, then ask again`,
          ]);
          expect(readFileSync(`${cgroup}/cgroup.procs`, "utf8")).toBe(`${pid}\n`);
          writeFileSync(`${cgroup}/cgroup.freeze`, "0");
        });
      } finally {
        writeFileSync(`${cgroup}/cgroup.freeze`, "0");
        for (let i = 0; i < 100 && readFileSync(`${cgroup}/cgroup.procs`, "utf8"); i++) await Bun.sleep(10);
        rmdirSync(cgroup);
      }
    },
  );

  test("the parent's wait for its child has a deadline: a child still there then is killed, and the run is exit 2", async () => {
    const marker = `${4000 + (process.pid % 1000)}.5`;
    const start = Date.now();
    const waited = runInContext([marker], 300, { command: ["/bin/sleep"] }).catch((e: Error) => e.message);
    expect(await waited).toBe("The probe's child did not finish within 300 ms: killed");
    expect(Date.now() - start).toBeLessThan(3000);
    expect(pids().filter((p) => cmdlineOf(p).includes(marker))).toEqual([]);
  });

  test("a child's document over 16 MiB is no report: the run is exit 2, and nothing cut is written whole", async () => {
    const flood = ["/bin/sh", "-c", "head -c 17000000 /dev/zero | tr '\\0' x"];
    const said = await runInContext([], 10_000, { capture: true, command: flood }).catch((e: Error) => e.message);
    expect(said).toBe("The probe's child wrote more than 16 MiB: no report is written");
  });

  test.skipIf(!isRoot || !realQemu || unprivileged !== "0" || !Bun.which("setcap"))(
    "unprivileged-userfaultfd: --pid of the host's own QEMU run as another user offers setcap on the file it runs",
    async () => {
      const nobody = ["/usr/bin/setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"];
      const idle = ["-machine", "none", "-nodefaults", "-display", "none", "-S", "-monitor", "none", "-serial", "none"];
      await withTarget([realQemu!, ...idle], { prefix: nobody }, (pid) => {
        const fixes = byPid(pid).report.diagnosis.flatMap((d) => d.fix);
        expect(fixes.filter((x) => x.startsWith("setcap"))).toEqual([
          `setcap cap_sys_ptrace+ep ${realpathSync(realQemu!)}   # broad: also lets QEMU ptrace`,
        ]);
      });
    },
  );

  test.skipIf(!isRoot)(
    "a child whose parent is gone writes no --output: the run is exit 2, its document on stdout",
    () => {
      const out = `${world}/orphan.json`;
      const run = cli(["--json", "--pid", "1", "--output", out], { env: { POSTCOPY_PROBE_PARENT: "4194001" } });
      expect([run.code, run.report.error, existsSync(out)]).toEqual([2, "The parent probe is gone", false]);
    },
  );

  test.skipIf(!isRoot || !strace)("--output is the parent's to write, even when the child fails", () => {
    const out = `${world}/child-fails.json`;
    const { opens } = traceOpens([`${world}/bun`, `${world}/probe.ts`, "--json", "--pid", "2", "--output", out]);
    const parent = opens[0].split(" ")[0];
    const writers = opens.filter((l) => l.includes(out)).map((l) => l.split(" ")[0]);
    expect([writers.length > 0, [...new Set(writers)]]).toEqual([true, [parent]]);
    expect(JSON.parse(readFileSync(out, "utf8")).error).toBe("Process 2 (kthreadd) is a kernel thread, not a QEMU");
  });

  test.skipIf(!isRoot)(
    "the walk that stands in for openat2() where the kernel lacks it resolves as openat2() does",
    () => {
      const dir = mkdtempSync(`${world}/walk-`);
      mkdirSync(`${dir}/a/b`, { recursive: true });
      writeFileSync(`${dir}/inside`, "");
      symlinkSync("/inside", `${dir}/a/absolute`);
      symlinkSync("../../../../inside", `${dir}/a/b/up`);
      symlinkSync("b", `${dir}/a/dir`);
      symlinkSync("loop", `${dir}/loop`);
      const root = sys.open(dir, K.O_PATH | K.O_CLOEXEC).ret;
      const inode = (r: R) => {
        if (r.ret < 0) return K.errnoName(r.errno);
        const st = sys.stat("", r.ret, K.AT_EMPTY_PATH);
        sys.close(r.ret);
        return String(st.ino);
      };
      try {
        const paths = ["/a/absolute", "/a/b/up", "/a/dir/up", "/../../inside", "/loop", "/a/missing", "/inside/x", "/"];
        const viaWalk = paths.map((p) => inode(walkIn(sys, root, p)));
        expect(viaWalk).toEqual(paths.map((p) => inode(openat2(root, p, 0))));
        const ino = (p: string) => String(sys.stat(p).ino);
        expect(viaWalk).toEqual([
          ino(`${dir}/inside`),
          ino(`${dir}/inside`),
          ino(`${dir}/inside`),
          ino(`${dir}/inside`),
          "ELOOP",
          "ENOENT",
          "ENOTDIR",
          ino(dir),
        ]);
      } finally {
        sys.close(root);
      }
    },
  );
});

describe("--pid (apparmor.ts): the process's AppArmor profile, taken on by a thread of the probe", () => {
  // Where AppArmor is on (Debian's 6.12 kernel, booted by ../shared/kernels, with securityfs mounted).
  const apparmor = existsSync("/sys/kernel/security/apparmor") && Bun.which("apparmor_parser") && Bun.which("aa-exec");
  const nobody = ["/usr/bin/setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"];

  test.skipIf(!isRoot || !apparmor || !realQemu || unprivileged !== "0")(
    "apparmor: under a profile without the device (0666 to it, sysctl 0), --pid says what QEMU 7.2 and 10 say",
    async () => {
      const name = `postcopy-probe-test-${process.pid}`;
      const rules = [
        "file,",
        "capability,",
        "network,",
        "signal,",
        "ptrace,",
        "unix,",
        "deny /dev/userfaultfd rw,",
        "deny capability sys_ptrace,",
      ];
      writeFileSync(
        `${world}/${name}`,
        `abi <abi/3.0>,\nprofile ${name} flags=(attach_disconnected) {\n  ${rules.join("\n  ")}\n}\n`,
      );
      expect(Bun.spawnSync([Bun.which("apparmor_parser")!, "-r", `${world}/${name}`]).exitCode).toBe(0);
      try {
        for (const q of [realQemu!, ...(qemu10 ? [qemu10] : [])]) {
          const prefix = [...deviceOpenTo("0666"), Bun.which("aa-exec")!, "-p", name, "--", ...nobody];
          await withQemu(q, prefix, [], async (pid, ask) => {
            const { code, report } = cli(["--json", "--pid", String(pid)]);
            expect([q, (await ask()).startsWith("no: Postcopy is not supported"), code, report.postcopy]).toEqual([
              q,
              true,
              1,
              false,
            ]);
            const cause = report.diagnosis.find((d) => d.cause === "apparmor");
            expect([routesOf(report)["device-node"], cause?.evidence, cause?.fix[0]]).toEqual([
              "EACCES",
              ["open of /dev/userfaultfd under it: EACCES"],
              `echo '/dev/userfaultfd rw,' >> /etc/apparmor.d/local/${name}`,
            ]);
            expect(report.diagnosis.flatMap((d) => d.fix).filter((f) => f.startsWith("setcap"))).toEqual([]);
          });
        }
      } finally {
        Bun.spawnSync([Bun.which("apparmor_parser")!, "-R", `${world}/${name}`]);
      }
    },
    120_000,
  );
});

describe("--pid (seccomp.ts): a process's filters, read and run as the kernel runs them", () => {
  /** struct sock_filter rows [code, jt, jf, k] as the interpreter takes them. */
  const prog = (rows: number[][]) => rows.map(([code, jt, jf, k]) => ({ code, jt, jf, k: k >>> 0 }));
  /** A program with every instruction class seccomp accepts (seccomp_check_filter()): loads, stores, ALU, jumps, RETs, TAX, TXA. */
  const EVERY = [
    [0x20, 0, 0, 4], // A = arch
    [0x15, 1, 0, 0xc000003e], // AUDIT_ARCH_X86_64?
    [0x06, 0, 0, 0x80000000], // a wrong arch: SECCOMP_RET_KILL_PROCESS
    [0x20, 0, 0, 0], // A = nr
    [0x45, 0, 1, 0x40000000], // __X32_SYSCALL_BIT?
    [0x06, 0, 0, 0x00050012], // x32: SECCOMP_RET_ERRNO(EXDEV)
    [0x15, 1, 0, 323], // userfaultfd?
    [0x06, 0, 0, 0x7fff0000], // anything else: SECCOMP_RET_ALLOW
    [0x80, 0, 0, 0], // A = sizeof(struct seccomp_data)
    [0x81, 0, 0, 0], // X = the same, BPF_LDX|BPF_LEN
    [0x1d, 1, 0, 0], // A == X?
    [0x06, 0, 0, 0], // SECCOMP_RET_KILL_THREAD
    [0x20, 0, 0, 16], // A = args[0], low word
    [0x02, 0, 0, 0], // M[0] = A
    [0x01, 0, 0, 3], // X = 3
    [0x0c, 0, 0, 0], // A += X
    [0x24, 0, 0, 5], // A *= 5
    [0x2c, 0, 0, 0], // A *= X
    [0x14, 0, 0, 1], // A -= 1
    [0x1c, 0, 0, 0], // A -= X
    [0x3c, 0, 0, 0], // A /= X
    [0x34, 0, 0, 2], // A /= 2
    [0x44, 0, 0, 0x100], // A |= 0x100
    [0x4c, 0, 0, 0], // A |= X
    [0x54, 0, 0, 0xfff], // A &= 0xfff
    [0x5c, 0, 0, 0], // A &= X (3)
    [0x04, 0, 0, 0x40], // A += 0x40
    [0x64, 0, 0, 2], // A <<= 2
    [0x6c, 0, 0, 0], // A <<= X
    [0x74, 0, 0, 1], // A >>= 1
    [0x7c, 0, 0, 0], // A >>= X
    [0xa4, 0, 0, 0x55], // A ^= 0x55
    [0xac, 0, 0, 0], // A ^= X
    [0x84, 0, 0, 0], // A = -A
    [0x84, 0, 0, 0], // A = -A
    [0x54, 0, 0, 0x3ff], // A &= 0x3ff (seccomp takes no BPF_MOD)
    [0x04, 0, 0, 1], // A += 1
    [0x07, 0, 0, 0], // X = A
    [0x03, 0, 0, 1], // M[1] = X
    [0x60, 0, 0, 0], // A = M[0] (the flags)
    [0x35, 0, 2, 0x800], // A >= O_NONBLOCK?
    [0x61, 0, 0, 1], // X = M[1]
    [0x05, 0, 0, 1], // JA over the next
    [0x01, 0, 0, 7], // X = 7
    [0x3d, 0, 1, 0], // A >= X?
    [0x4d, 0, 1, 0], // A & X?
    [0x00, 0, 0, 9], // A = 9 (BPF_LD|BPF_IMM), when neither
    [0x87, 0, 0, 0], // A = X
    [0x25, 1, 0, 0xffff], // A > 0xffff (never)?
    [0x44, 0, 0, 0x00050000], // A |= SECCOMP_RET_ERRNO
    [0x16, 0, 0, 0], // RET A
  ];
  const x86 = (nr: number, flags: number) => ({ nr, arch: 0xc000003e, args: [BigInt(flags), 0n, 0n, 0n, 0n, 0n] });
  const byPid = (pid: number, ...more: string[]) => cli(["--json", "--pid", String(pid), ...more]);

  // A copy in the test's world, which every user can read (a checkout may be in a directory only root can).
  const seccompRun = `${world}/seccomp-run.py`;
  copyFileSync(`${import.meta.dir}/test/seccomp-run.py`, seccompRun);
  const python =
    existsSync("/usr/bin/python3") && Bun.spawnSync(["/usr/bin/python3", "-c", "import seccomp"]).exitCode === 0;
  const skip = !isRoot || !realQemu || !python;
  /** Docker's default capabilities (moby's defaults): the rules a profile gives them apply. */
  const DOCKER_CAPS =
    "CAP_CHOWN,CAP_DAC_OVERRIDE,CAP_FSETID,CAP_FOWNER,CAP_MKNOD,CAP_NET_RAW,CAP_SETGID,CAP_SETUID,CAP_SETFCAP,CAP_SETPCAP,CAP_NET_BIND_SERVICE,CAP_SYS_CHROOT,CAP_KILL,CAP_AUDIT_WRITE";
  /** A Docker-format profile: Docker's default with `also` added to its rules, or one of its own. */
  function profile(name: string, also: object[] = [], base?: object) {
    const docker = JSON.parse(readFileSync(`${import.meta.dir}/test/docker-default.json`, "utf8"));
    const whole = base ?? { ...docker, syscalls: [...docker.syscalls, ...also] };
    writeFileSync(`${world}/${name}.json`, JSON.stringify(whole));
    return ["/usr/bin/python3", seccompRun, `${world}/${name}.json`, DOCKER_CAPS];
  }
  const seccompOf = (r: Report) => r.diagnosis.find((d) => d.cause === "seccomp");

  test.skipIf(skip)(
    "seccomp: under Docker's default profile, --pid says what QEMU 7.2 says, naming the filter's answer",
    async () => {
      await withQemu(realQemu!, profile("docker"), [], async (pid, ask) => {
        const { code, report } = byPid(pid);
        expect([await ask(), code, report.postcopy]).toEqual(["no: Postcopy is not supported", 1, false]);
        expect(seccompOf(report)?.evidence[0]).toMatch(
          /^userfaultfd\(O_CLOEXEC\): SECCOMP_RET_ERRNO\(EPERM\), filter 1 of 1, \d+ instructions$/,
        );
        expect(check(report, "context").detail).toMatch(
          /; seccomp filters of \d+ instructions, read and run for each route$/,
        );
      });
    },
    30_000,
  );

  test.skipIf(skip)(
    "a filter that hands userfaultfd to a tracer (TRACE) decides nothing ahead: UNKNOWN, exit 2, never a yes or a no",
    async () => {
      const traced = {
        defaultAction: "SCMP_ACT_ALLOW",
        syscalls: [{ names: ["userfaultfd"], action: "SCMP_ACT_TRACE" }],
      };
      await withQemu(realQemu!, profile("trace", [], traced), [], async (pid) => {
        const { code, report } = byPid(pid);
        expect([code, report.postcopy, report.required.ok, report.undetermined.includes("postcopy-ram")]).toEqual([
          2,
          null,
          null,
          true,
        ]);
        expect(report.error).toContain(
          "postcopy-ram: a seccomp filter hands userfaultfd to a supervisor (USER_NOTIF) or a tracer (TRACE)",
        );
        expect(report.settle).toContain(
          "ask the container runtime's seccomp supervisor what it answers for userfaultfd",
        );
      });
    },
    30_000,
  );

  test.skipIf(skip || process.arch !== "x64")(
    "seccomp: --migrate installs the process's filters in its destination: under Docker's default, refused",
    async () => {
      await withQemu(realQemu!, profile("docker-migrate"), [], async (pid) => {
        const { code, report } = cli(["--json", "--pid", String(pid), "--migrate"]);
        const m = report.migration!;
        // As root, only the filter can refuse QEMU its userfaultfd: the destination had it from its first instruction.
        expect([code, report.postcopy, m.ok, report.host.uid]).toEqual([1, false, false, 0]);
        expect(m.why).toStartWith("the destination refused postcopy-ram: Postcopy is not supported");
        expect(causes(report)).toContain("seccomp");
      });
    },
    60_000,
  );

  test.skipIf(skip)(
    "unprivileged-userfaultfd, not seccomp: the runtime default plus userfaultfd, for uid 107",
    async () => {
      const kubevirt = profile("kubevirt", [{ names: ["userfaultfd"], action: "SCMP_ACT_ALLOW" }]);
      const as107 = ["/usr/bin/setpriv", "--reuid=107", "--regid=107", "--clear-groups", ...kubevirt];
      await withQemu(realQemu!, as107, [], async (pid, ask) => {
        const { code, report } = byPid(pid);
        const expected = unprivileged === "0" ? ["no", 1, false] : ["yes", 0, true];
        expect([(await ask()).split(":")[0], code, report.postcopy]).toEqual(expected);
        expect(seccompOf(report)).toBeUndefined();
        if (unprivileged === "0") expect(causes(report)).toContain("unprivileged-userfaultfd");
        // Its filter was read and run: no "shows once the sysctl allows it", which only an unread filter needs.
        const sysctl = report.diagnosis.find((d) => d.cause === "unprivileged-userfaultfd");
        expect(sysctl?.evidence.filter((e) => e.includes("Seccomp: 2")) ?? []).toEqual([]);
      });
    },
    30_000,
  );

  test.skipIf(skip)(
    "seccomp: a systemd-style deny list kills QEMU on userfaultfd(2), and the probe says so",
    async () => {
      const denies = {
        defaultAction: "SCMP_ACT_ALLOW",
        syscalls: [{ names: ["userfaultfd"], action: "SCMP_ACT_KILL_PROCESS" }],
      };
      await withQemu(realQemu!, profile("systemd", [], denies), [], async (pid, ask) => {
        const { code, report } = byPid(pid);
        expect([code, report.postcopy, seccompOf(report)?.evidence[0]]).toEqual([
          1,
          false,
          expect.stringMatching(
            /^userfaultfd\(O_CLOEXEC\): SECCOMP_RET_KILL_PROCESS, filter 1 of 1, \d+ instructions$/,
          ),
        ]);
        expect(routesOf(report).syscall).toBe("SIGSYS");
        expect((await ask()).startsWith("no")).toBe(true); // QEMU is killed when it asks the kernel
      });
    },
    30_000,
  );

  test.skipIf(skip)(
    "seccomp: an argument-conditional rule that refuses UFFDIO_REGISTER refuses postcopy, as in QEMU",
    async () => {
      const register = { index: 1, value: Number(K.UFFDIO_REGISTER), op: "SCMP_CMP_EQ" };
      const rules = {
        defaultAction: "SCMP_ACT_ALLOW",
        syscalls: [{ names: ["ioctl"], action: "SCMP_ACT_ERRNO", errnoRet: 1, args: [register] }],
      };
      await withQemu(realQemu!, profile("register", [], rules), [], async (pid, ask) => {
        const { code, report } = byPid(pid);
        expect([(await ask()).startsWith("no: Postcopy is not supported"), code, report.postcopy]).toEqual([
          true,
          1,
          false,
        ]);
        expect(seccompOf(report)?.evidence[0]).toMatch(
          /^ioctl\(UFFDIO_REGISTER\): SECCOMP_RET_ERRNO\(EPERM\), filter 1 of 1, \d+ instructions$/,
        );
      });
    },
    30_000,
  );

  test.skipIf(skip)(
    "seccomp: a filter that denies munlockall(), which QEMU's check calls, refuses postcopy, as in QEMU",
    async () => {
      const rules = {
        defaultAction: "SCMP_ACT_ALLOW",
        syscalls: [{ names: ["munlockall"], action: "SCMP_ACT_ERRNO" }],
      };
      await withQemu(realQemu!, profile("munlockall", [], rules), [], async (pid, ask) => {
        const { code, report } = byPid(pid);
        expect([(await ask()).startsWith("no: Postcopy is not supported"), code, report.postcopy]).toEqual([
          true,
          1,
          false,
        ]);
        expect(seccompOf(report)?.evidence[0]).toMatch(
          /^munlockall\(\): SECCOMP_RET_ERRNO\(EPERM\), filter 1 of 1, \d+ instructions$/,
        );
      });
    },
    30_000,
  );

  test.skipIf(skip)(
    "seccomp: userfaultfd(2) allowed only with O_CLOEXEC|O_NONBLOCK refuses QEMU's O_CLOEXEC, as in QEMU",
    async () => {
      const flags = { index: 0, value: K.O_CLOEXEC | K.O_NONBLOCK, op: "SCMP_CMP_EQ" };
      const allowed = [{ names: ["userfaultfd"], action: "SCMP_ACT_ALLOW", args: [flags] }];
      await withQemu(realQemu!, profile("nonblock-only", allowed), [], async (pid, ask) => {
        const { code, report } = byPid(pid);
        expect([(await ask()).startsWith("no: Postcopy is not supported"), code, report.postcopy]).toEqual([
          true,
          1,
          false,
        ]);
        expect(seccompOf(report)?.evidence[0]).toMatch(/^userfaultfd\(O_CLOEXEC\): SECCOMP_RET_ERRNO\(EPERM\)/);
      });
    },
    30_000,
  );

  test.skipIf(skip || !cc)(
    "a filter that hands the device's openat() to a supervisor (USER_NOTIF) decides nothing for QEMU 8.0+: UNKNOWN",
    async () => {
      const notify = { defaultAction: "SCMP_ACT_ALLOW", syscalls: [{ names: ["openat"], action: "SCMP_ACT_NOTIFY" }] };
      const qemu10 = standIn("qemu-system-x86_64", ["-static", '-DVERSION="10.0.0"']);
      await withTarget([qemu10], { prefix: profile("notify", [], notify) }, (pid) => {
        const { code, report } = byPid(pid);
        expect([code, report.postcopy, report.undetermined.includes("postcopy-ram")]).toEqual([2, null, true]);
        expect(report.error).toContain("a seccomp filter hands userfaultfd to a supervisor (USER_NOTIF)");
      });
    },
    30_000,
  );

  test.skipIf(skip || !cc)(
    "a process whose main thread cannot stop (in vfork) is let go at the bound, never left in a tracing stop",
    async () => {
      // Its vfork() child sleeps 2 s: the process stops for ptrace only then, after the 1 s bound, while the run
      // (its --bench) still goes on.
      const q = standIn("qemu-system-x86_64");
      await withTarget([q, "-vfork", "2"], { prefix: profile("vfork") }, async (pid) => {
        const status = () => procOf(String(pid), "status");
        const probe = Bun.spawn(
          [`${world}/bun`, `${world}/probe.ts`, "--json", "--pid", String(pid), "--bench", "40000"],
          {
            stdio: ["ignore", "pipe", "pipe"],
          },
        );
        const seen = new Set<string>();
        while (probe.exitCode === null) {
          seen.add(status().match(/^State:\s+(\S)/m)?.[1] ?? "");
          await Bun.sleep(20);
        }
        const report = JSON.parse(await new Response(probe.stdout).text()) as Report;
        expect([probe.exitCode, report.error]).toEqual([2, expect.stringContaining("did not stop within 1000 ms")]);
        expect([...seen].filter((state) => state === "t")).toEqual([]);
        expect(status()).toMatch(/^TracerPid:\s+0$/m);
      });
    },
    60_000,
  );

  test.skipIf(skip || !cc || !existsSync("/sys/fs/cgroup/freezer/cgroup.procs"))(
    "a process in a frozen cgroup-v1 freezer is exit 2, said as such: never a ptrace failure",
    async () => {
      const q = standIn("qemu-system-x86_64");
      const cgroup = mkdtempSync("/sys/fs/cgroup/freezer/postcopy-probe-test-");
      try {
        await withTarget([q], { prefix: profile("frozen") }, (pid) => {
          writeFileSync(`${cgroup}/cgroup.procs`, String(pid));
          writeFileSync(`${cgroup}/freezer.state`, "FROZEN");
          try {
            const { code, report, stderr } = byPid(pid);
            expect([code, report.error]).toEqual([
              2,
              `Process ${pid} (qemu-system-x86) is in a frozen cgroup, ${cgroup} (a paused container?): thaw it, then ask again`,
            ]);
            expect(stderr).not.toContain("ptrace");
          } finally {
            writeFileSync(`${cgroup}/freezer.state`, "THAWED");
            writeFileSync("/sys/fs/cgroup/freezer/cgroup.procs", String(pid));
          }
        });
      } finally {
        rmdirSync(cgroup);
      }
    },
    30_000,
  );

  test.skipIf(skip || !Bun.which("strace"))(
    "filters that cannot be read (a process already traced) are UNKNOWN, exit 2",
    async () => {
      const traced = [
        Bun.which("strace")!,
        "-f",
        "-qq",
        "-e",
        "trace=none",
        "-o",
        "/dev/null",
        ...profile("traced-docker"),
      ];
      await withQemu(realQemu!, traced, [], async (pid) => {
        const { code, report } = byPid(pid);
        expect([code, report.postcopy, report.error]).toEqual([
          2,
          null,
          expect.stringContaining("its seccomp filters could not be read: PTRACE_SEIZE"),
        ]);
      });
    },
    30_000,
  );

  test("verdicts(): a filter that refuses nothing sets no route, the device's included", () => {
    const allowAll = prog([[0x06, 0, 0, 0x7fff0000]]);
    // A key set to nothing would stand over the kernel's own answer for that route (checkOpen spreads them).
    expect(Object.entries(verdicts([allowAll], "x86_64", 4096)!.answers)).toEqual([]);
    // One that refuses the node's open() refuses the device's route with it.
    const noOpen = prog([
      [0x20, 0, 0, 0],
      [0x15, 0, 1, 257],
      [0x06, 0, 0, 0x00050001],
      [0x06, 0, 0, 0x7fff0000],
    ]);
    expect(verdicts([noOpen], "x86_64", 4096)?.answers).toEqual({ "device-node": "EPERM", device: "EPERM" });
  });

  test("run() gives what the kernel gives: every instruction class, x32, and a wrong arch", () => {
    const calls: Array<[number, number]> = [
      [323, 0],
      [323, 0x800],
      [323, 0x80800],
      [323, 1],
      [323 | 0x40000000, 0],
      [39, 0],
    ];
    const script = `${world}/bpf-in-kernel.ts`;
    writeFileSync(
      script,
      `import { ptr } from "bun:ffi";
      import { answer, FFIType as T, loadSys, openLibc } from "./ffi.ts";
      loadSys();
      const c = openLibc({ prctl: { args: [T.i32, T.u64, T.ptr, T.u64, T.u64], returns: T.i32 }, syscall: { args: [T.i64, T.i64], returns: T.i64_fast } });
      const rows = JSON.parse(process.argv[2]);
      const bytes = new Uint8Array(8 * rows.length);
      const view = new DataView(bytes.buffer);
      rows.forEach(([code, jt, jf, k], i) => { view.setUint16(8 * i, code, true); view.setUint8(8 * i + 2, jt); view.setUint8(8 * i + 3, jf); view.setUint32(8 * i + 4, k >>> 0, true); });
      const prog = new BigUint64Array([BigInt(rows.length), BigInt(ptr(bytes))]);
      if (c.prctl(38, 1, null, 0, 0) || c.prctl(22, 2, prog, 0, 0)) throw new Error("the kernel refused the filter");
      bytes.fill(0, 0, 0); // the kernel read it during prctl: keep it referenced until then
      console.log(JSON.stringify(JSON.parse(process.argv[3]).map(([nr, a]) => answer(Number(c.syscall(nr, a))).errno)));`,
    );
    const kernel = Bun.spawnSync([`${world}/bun`, script, JSON.stringify(EVERY), JSON.stringify(calls)]);
    const errnos = JSON.parse(kernel.stdout.toString() || "null");
    const interpreted = calls.map(([nr, flags]) => {
      const value = run(prog(EVERY), x86(nr, flags));
      return value >>> 16 === 0x5 ? value & 0xffff : 0; // SECCOMP_RET_ERRNO: the errno; SECCOMP_RET_ALLOW: none
    });
    expect(errnos).toEqual(interpreted);
    expect(interpreted[4]).toBe(18); // x32: EXDEV
    expect(interpreted.slice(0, 4).every((e) => e > 0)).toBe(true);
    // Shifts by X of 32 and more, as the kernel runs them (by the count's low 5 bits): X is the call's first argument.
    const SHIFTS = [
      ...[
        [0x20, 0, 0, 0],
        [0x15, 1, 0, 323],
        [0x06, 0, 0, 0x7fff0000],
      ], // userfaultfd, else SECCOMP_RET_ALLOW
      ...[
        [0x20, 0, 0, 16],
        [0x07, 0, 0, 0],
      ], // X = args[0]
      ...[
        [0x00, 0, 0, 1],
        [0x6c, 0, 0, 0],
        [0x02, 0, 0, 0],
      ], // M[0] = 1 << X
      ...[
        [0x00, 0, 0, 0x800],
        [0x7c, 0, 0, 0],
        [0x61, 0, 0, 0],
        [0x4c, 0, 0, 0],
      ], // A = 0x800 >> X | M[0]
      ...[
        [0x54, 0, 0, 0xfff],
        [0x44, 0, 0, 0x00050000],
        [0x16, 0, 0, 0],
      ], // RET SECCOMP_RET_ERRNO(A & 0xfff)
    ];
    const shiftCalls: Array<[number, number]> = [
      [323, 3],
      [323, 32],
      [323, 33],
      [323, 36],
    ];
    const shifted = Bun.spawnSync([`${world}/bun`, script, JSON.stringify(SHIFTS), JSON.stringify(shiftCalls)]);
    const byRun = shiftCalls.map(([nr, flags]) => run(prog(SHIFTS), x86(nr, flags)) & 0xffff);
    expect([JSON.parse(shifted.stdout.toString() || "null"), byRun]).toEqual([byRun, [0x108, 0x801, 0x402, 0x90]]);
    // Another architecture's call (AUDIT_ARCH_I386): killed, as the filter says.
    expect(actionName(run(prog(EVERY), { ...x86(374, 0), arch: 0x40000003 }))).toBe("SECCOMP_RET_KILL_PROCESS");
  });

  test("combined() takes the most restrictive action, as the kernel does, whichever filter says it", () => {
    const ret = (k: number) => prog([[0x06, 0, 0, k]]);
    const call = x86(323, 0);
    const order = [0x80000000, 0, 0x00030000, 0x00050001, 0x7fc00000, 0x7ff00000, 0x7ffc0000, 0x7fff0000];
    for (let i = 0; i < order.length; i++) {
      const filter = order[i] === 0x7fff0000 ? -1 : 1; // nothing but ALLOW: no filter decided
      for (const looser of order.slice(i))
        expect([order[i], combined([ret(looser), ret(order[i])], call)]).toEqual([
          order[i],
          { value: order[i], filter },
        ]);
    }
    expect(["SECCOMP_RET_ERRNO(EPERM)", "SECCOMP_RET_USER_NOTIF", "SECCOMP_RET_KILL_THREAD"]).toEqual(
      [0x00050001, 0x7fc00000, 0].map(actionName),
    );
  });
});

describe("--migrate (migrate.ts): a real postcopy migration between two QEMUs, in the probe's context", () => {
  const skip = !isRoot || !realQemu || process.arch !== "x64";
  /** What a migration could leave behind: a QEMU it started, or its private directory. */
  const left = () => [
    ...pids().filter((p) => cmdlineOf(p).includes("postcopy-probe-migrate-")),
    ...readdirSync(tmpdir()).filter((n) => n.startsWith("postcopy-probe-migrate-")),
  ];
  const MS = 60_000;
  const byPid = (pid: number, ...more: string[]) => cli(["--json", "--pid", String(pid), ...more]);

  test.skipIf(skip)(
    "as root, QEMU 7.2 and 10: postcopy-active, then completed, with pages requested and blocktime; nothing left",
    () => {
      for (const asked of [[], ...(qemu10 ? [["--qemu", qemu10]] : [])]) {
        const { code, report } = cli(["--json", "--migrate", ...asked]);
        const m = report.migration!;
        expect([code, report.postcopy, m.ok, m.why, m.statuses.slice(-2)]).toEqual([
          0,
          true,
          true,
          undefined,
          ["postcopy-active", "completed"],
        ]);
        expect(m.pagesRequested).toBeGreaterThan(0);
        expect([typeof m.totalMs, typeof m.downtimeMs, typeof m.blocktimeMs, m.vcpuBlocktimeMs?.length]).toEqual([
          "number",
          "number",
          "number",
          1,
        ]);
        expect([report.answeredBy?.startsWith("a real migration, QEMU "), check(report, "migration").status]).toEqual([
          true,
          "pass",
        ]);
        expect(left()).toEqual([]);
      }
    },
    MS,
  );

  test.skipIf(skip)(
    "unprivileged-userfaultfd: as uid 65534 and with --user nobody, the sysctl decides: refused at 0, completed at 1",
    () => {
      for (const run of [
        cli(["--json", "--migrate"], { nobody: true }),
        cli(["--json", "--migrate", "--user", "nobody"]),
      ]) {
        const { code, report } = run;
        const m = report.migration!;
        if (unprivileged === "0") {
          expect([code, report.postcopy, m.ok]).toEqual([1, false, false]);
          expect(m.why).toStartWith("the destination refused postcopy-ram: Postcopy is not supported");
          expect(causes(report)).toContain("unprivileged-userfaultfd");
        } else expect([code, report.postcopy, m.ok, m.statuses.at(-1)]).toEqual([0, true, true, "completed"]);
        expect([report.host.uid, left()]).toEqual([65534, []]);
      }
    },
    MS,
  );

  test.skipIf(skip)(
    "vm-config: --pid of a QEMU whose RAM is a file: on ext4 postcopy cannot complete, a no; on tmpfs it completes",
    async () => {
      const ext4 = Bun.spawnSync(["findmnt", "-no", "FSTYPE", "-T", world]).stdout.toString().trim() === "ext4";
      const dirs: Array<[string, boolean]> = [
        ...(ext4 ? [[`${world}/ram-on-ext4`, false] as [string, boolean]] : []),
        [`/dev/shm/postcopy-probe-test-${process.pid}`, true],
      ];
      for (const [dir, completes] of dirs) {
        mkdirSync(dir);
        try {
          const ram = ["-object", `memory-backend-file,id=ram,size=64M,mem-path=${dir},share=on`];
          await withQemu(realQemu!, [], [...ram, "-machine", "memory-backend=ram"], async (pid) => {
            const { code, report } = byPid(pid, "--migrate");
            const m = report.migration!;
            expect([dir, code, m.ok]).toEqual([dir, completes ? 0 : 1, completes]);
            // QEMU 7.2 takes postcopy on ext4, then pauses; 8.1 and later refuse it at once.
            if (!completes) expect(m.why).toMatch(/postcopy-paused|TMPFS or HUGETLBFS/);
            if (!completes) expect(causes(report)).toContain("vm-config");
          });
          expect([readdirSync(dir), left()]).toEqual([[], []]); // QEMU's RAM files are unlinked at once
        } finally {
          rmSync(dir, { recursive: true, force: true });
        }
      }
    },
    MS,
  );

  test.skipIf(skip)(
    "qemu-multifd: --parallel 2 answers postcopy-multifd as QEMU does it (7.2's destination aborts, 10.0 refuses)",
    () => {
      // --qemu alone: QEMU 7.2 takes the pair over QMP, which is no yes (its destination aborts).
      const asked = cli(["--json", "--qemu", "--require", "postcopy-multifd"]);
      const version = asked.report.qemu?.version ?? "";
      expect([version, asked.code]).toEqual([version, multifdWith(version) ? 0 : 1]);
      for (const asked of [[], ...(qemu10 ? [["--qemu", qemu10]] : [])]) {
        const { code, report } = cli(["--json", "--parallel", "2", ...asked]);
        const m = report.migration!;
        const version = report.answeredBy?.match(/QEMU (\S+)/)?.[1] ?? "";
        const works = multifdWith(version);
        expect([version, code, report.required.capabilities, m.parallel, m.ok]).toEqual([
          version,
          works ? 0 : 1,
          ["postcopy-multifd"],
          2,
          works,
        ]);
        if (!works) expect(m.why).toMatch(/destination ends gone|not yet compatible with multifd/);
        if (!works) expect(causes(report)).toContain("qemu-multifd");
        expect(left()).toEqual([]);
      }
    },
    MS,
  );

  test.skipIf(skip)(
    "hostile mem-path: the copy makes a file of its own in that directory, never opens the tenant's, and leaves none",
    async () => {
      // A mem-path that names a file on tmpfs: the tenant's QEMU makes it; the copy's RAM goes beside it, unlinked.
      const shm = mkdtempSync("/dev/shm/postcopy-probe-test-");
      const victim = `${world}/victim.img`;
      try {
        const ram = (path: string) => ["-object", `memory-backend-file,id=ram,size=64M,mem-path=${path},share=on`];
        await withQemu(realQemu!, [], [...ram(`${shm}/ram`), "-machine", "memory-backend=ram"], async (pid) => {
          const { code, report } = byPid(pid, "--migrate");
          expect([code, report.migration!.ok, readdirSync(shm)]).toEqual([0, true, ["ram"]]);
        });
        // A directory the tenant then turns into a link to another file: never opened, and no answer.
        writeFileSync(victim, "not RAM");
        mkdirSync(`${shm}/f`);
        await withQemu(realQemu!, [], [...ram(`${shm}/f/x`), "-machine", "memory-backend=ram"], async (pid) => {
          rmSync(`${shm}/f`, { recursive: true });
          symlinkSync(victim, `${shm}/f`);
          const { code, report } = byPid(pid, "--migrate");
          expect([code, report.migration!.ok, report.migration!.why]).toEqual([
            2,
            null,
            `the directory of its mem-path ${shm}/f/x could not be reached inside the process's root`,
          ]);
        });
        expect([readFileSync(victim, "utf8"), readdirSync(shm).sort(), left()]).toEqual(["not RAM", ["f", "ram"], []]);
      } finally {
        rmSync(shm, { recursive: true, force: true });
      }
    },
    MS,
  );

  test.skipIf(skip)(
    "--pid of a QEMU under libvirt's -sandbox: the copy runs under the process's other filters and QEMU's own sandbox",
    async () => {
      const sandbox = ["-sandbox", "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"];
      await withQemu(realQemu!, [], sandbox, async (pid) => {
        const { code, report } = byPid(pid, "--migrate");
        expect([code, report.migration!.ok, report.migration!.statuses.at(-1)]).toEqual([0, true, "completed"]);
      });
    },
    MS,
  );

  test.skipIf(skip)(
    "capabilities: --pid of a QEMU with an ambient CAP_SYS_PTRACE migrates with it; one without it, as root, does not",
    async () => {
      const ambient = [
        ...["/usr/bin/setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"],
        ...["--inh-caps=+sys_ptrace", "--ambient-caps=+sys_ptrace"],
      ];
      await withQemu(realQemu!, ambient, [], async (pid, ask) => {
        const { code, report } = byPid(pid, "--migrate");
        expect([await ask(), code, report.postcopy, report.migration!.ok]).toEqual(["yes", 0, true, true]);
      });
      // Root without CAP_SYS_PTRACE (libvirt clears a root QEMU's capabilities): the sysctl decides.
      const bare = ["/usr/bin/setpriv", "--bounding-set=-sys_ptrace", "--inh-caps=-sys_ptrace"];
      await withQemu(realQemu!, bare, [], async (pid, ask) => {
        const { code, report } = byPid(pid);
        const yes = unprivileged !== "0";
        expect([(await ask()).split(":")[0], code, report.postcopy]).toEqual([yes ? "yes" : "no", yes ? 0 : 1, yes]);
      });
    },
    MS,
  );

  /**
   * A copy of the host's QEMU carrying cap_sys_ptrace+ep, in a directory only root writes (so it is the host's own,
   * which --migrate may run for --pid), removed after the tests.
   */
  const capped = (() => {
    let dir: string | null = null;
    afterAll(() => dir && rmSync(dir, { recursive: true, force: true }));
    return () => {
      if (dir) return `${dir}/bin/qemu-system-x86_64`;
      dir = mkdtempSync("/run/postcopy-probe-test-");
      chmodSync(dir, 0o755);
      mkdirSync(`${dir}/bin`, { mode: 0o755 });
      // QEMU finds its modules and data beside its binary (../lib, ../share), as it does in /usr.
      for (const tree of ["lib", "share"]) symlinkSync(`/usr/${tree}`, `${dir}/${tree}`);
      copyFileSync(realQemu!, `${dir}/bin/qemu-system-x86_64`);
      const capped = `${dir}/bin/qemu-system-x86_64`;
      expect(Bun.spawnSync(["/usr/sbin/setcap", "cap_sys_ptrace+ep", capped]).exitCode).toBe(0);
      return capped;
    };
  })();
  const setcap_ = existsSync("/usr/sbin/setcap");

  test.skipIf(skip)(
    "a signal to the probe mid-migration: SIGTERM and SIGKILL leave nothing, QEMUs with a file capability included",
    async () => {
      const runs: Array<[string, string[], string]> = [
        ["SIGTERM", [], realQemu!],
        ["SIGKILL", [], realQemu!],
        // A QEMU that gains a file capability as nobody runs a secure exec, which clears its parent-death signal.
        ...(setcap_ ? [["SIGKILL", ["--user", "nobody"], capped()] as [string, string[], string]] : []),
      ];
      for (const [signal, args, qemu] of runs) {
        const probe = Bun.spawn([`${world}/bun`, `${world}/probe.ts`, "--migrate", ...args], {
          cwd: world,
          env: { ...process.env, PATH: pathWith(dirname(qemu)) },
          stdio: ["ignore", "ignore", "ignore"],
        });
        const until = Date.now() + 20_000;
        const qemus = () => pids().filter((p) => /-bios\0[^\0]*postcopy-probe-migrate-/.test(cmdlineOf(p)));
        while (Date.now() < until && qemus().length < 2) await Bun.sleep(20);
        const started = qemus().length;
        probe.kill(signal as NodeJS.Signals);
        await probe.exited;
        for (let i = 0; i < 100 && left().length; i++) await Bun.sleep(20);
        expect([signal, args, started, left()]).toEqual([signal, args, 2, []]);
        for (const p of pids().filter((p) => cmdlineOf(p).includes("postcopy-probe-migrate-")))
          process.kill(Number(p), 9);
      }
    },
    MS,
  );

  test.skipIf(skip || unprivileged !== "0")(
    "capabilities: a root QEMU with none outside its user namespace, or under SECBIT_NOROOT: its copies hold none either",
    async () => {
      for (const prefix of [
        ["/usr/bin/unshare", "-Ur"],
        ["/usr/bin/setpriv", "--securebits", "+noroot,+noroot_locked"],
      ]) {
        await withQemu(realQemu!, prefix, [], async (pid, ask) => {
          const { code, report } = byPid(pid, "--migrate");
          expect([prefix[0], (await ask()).split(":")[0], code, report.postcopy, report.migration!.ok]).toEqual([
            prefix[0],
            "no",
            1,
            false,
            false,
          ]);
        });
      }
    },
    MS,
  );

  test.skipIf(skip || !setcap_)(
    "NoNewPrivs: the QEMUs --migrate starts for a QEMU under it are under it too, and answer as that QEMU does",
    async () => {
      const nnp = ["/usr/bin/setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--no-new-privs"];
      await withQemu(capped(), nnp, [], async (pid, ask) => {
        const probe = Bun.spawn([`${world}/bun`, `${world}/probe.ts`, "--json", "--pid", String(pid), "--migrate"], {
          stdio: ["ignore", "pipe", "ignore"],
        });
        const copies = new Map<string, string>();
        while (probe.exitCode === null) {
          for (const p of pids().filter((p) => /-bios\0[^\0]*postcopy-probe-migrate-/.test(cmdlineOf(p))))
            copies.set(p, procOf(p, "status").match(/^NoNewPrivs:\s+(\d)/m)?.[1] ?? "gone");
          await Bun.sleep(20);
        }
        const report = JSON.parse(await new Response(probe.stdout).text()) as Report;
        const yes = (await ask()) === "yes"; // whether this kernel grants a file capability under NoNewPrivs
        expect([report.postcopy, report.migration!.ok]).toEqual([yes, yes]);
        expect([...copies.values()].filter((v) => v !== "gone").every((v) => v === "1")).toBe(true);
        expect([...copies.values()].filter((v) => v === "1").length).toBeGreaterThan(0);
      });
    },
    MS,
  );

  test.skipIf(skip)(
    "--migrate that cannot set up here (TMPDIR not writable) is UNKNOWN with why, the report kept",
    () => {
      const { code, report } = cli(["--json", "--migrate"], { env: { TMPDIR: "/proc" } });
      expect([code, report.postcopy, report.migration?.ok, check(report, "migration")?.status]).toEqual([
        2,
        null,
        null,
        "skip",
      ]);
      expect(report.migration?.why).toStartWith("it could not be set up here: ");
      expect(check(report, "register-anon").status).toBe("pass");
    },
  );

  test("with no QEMU, --migrate cannot answer: exit 2 with the reason, and no yes or no", () => {
    const { code, report } = cli(["--json", "--migrate"], { path: NO_QEMU });
    expect([code, report.postcopy, report.migration?.ok]).toEqual([2, null, null]);
    expect(report.error).toMatch(/^could not answer what was asked: --migrate: no QEMU found: looked for /);
  });
});

describe("--bench (bench.ts)", () => {
  test.skipIf(!isRoot)(
    "--bench 120000 keeps every buffer the kernel copies from alive, and says which route it measured",
    () => {
      // Before the buffers were held, the collector freed them under UFFDIO_COPY after ~55 000 faults.
      const { code, report } = cli(["--bench", "120000", "--json"]);
      expect(code).toBe(0);
      const base = [report.bench].flat()[0] as Record<string, unknown>;
      expect(Object.keys(base)).toEqual([
        "faults",
        "pageSize",
        "route",
        "p50Ns",
        "p99Ns",
        "pagesPerSec",
        "bytesPerSec",
      ]);
      expect([base.faults, base.pageSize, base.route]).toEqual([120000, facts.pageSize, "device"]);
      expect(base.p99Ns as number).toBeGreaterThanOrEqual(base.p50Ns as number);
      expect(base.bytesPerSec).toBe((base.pagesPerSec as number) * facts.pageSize);
    },
    60000,
  );

  test.skipIf(!isRoot)("--bench -q still prints the benchmark line", () => {
    const run = cli(["--bench", "2000", "-q"]);
    expect(run.stdout).toMatch(
      /\nBenchmark \(2000 faults on 4096 B pages, device\): p50 [\d.]+ µs, p99 [\d.]+ µs, \d+ pages\/s/,
    );
  });

  test.skipIf(!isRoot)("a --bench progress line on a terminal is erased when a signal ends the run", async () => {
    const out = `${world}/typescript`;
    const cmd = `${world}/bun ${world}/probe.ts --bench 500000 -q`;
    const pty = Bun.spawn(["/usr/bin/script", "-qfec", cmd, out], { stdio: ["ignore", "ignore", "ignore"] });
    let child = 0;
    for (let i = 0; i < 100 && !child; i++) {
      await Bun.sleep(50);
      const text = existsSync(out) ? readFileSync(out, "latin1") : "";
      if (!text.includes("bench: ")) continue;
      child = Number(pids().find((p) => cmdlineOf(p).includes("--bench\x00500000")));
    }
    process.kill(child, "SIGINT");
    await pty.exited;
    const text = readFileSync(out, "latin1");
    expect(text).toMatch(new RegExp(`bench: \\d+/500000 faults\r${"\x1b"}\\[K`));
    expect(text).toContain('COMMAND_EXIT_CODE="130"');
  });
});

describe("--format prometheus and --output (textfile.ts)", () => {
  const report = sample;

  test("renderPrometheus() writes gauges with HELP and TYPE for the textfile collector", () => {
    const withTrip = {
      ...report,
      features: { THREAD_ID: true, MOVE: false, unknown: "0x0" },
      roundTrip: { ok: true, ns: 1500 },
      migration: { ok: false, blocktimeMs: 27, pagesRequested: 812 },
    };
    const help = (name: string, text: string) => [
      `# HELP postcopy_probe_${name} ${text}`,
      `# TYPE postcopy_probe_${name} gauge`,
    ];
    const statuses = (id: string, on: string) =>
      ["pass", "warn", "fail", "skip"].map((s) => `postcopy_probe_check{id="${id}",status="${s}"} ${s === on ? 1 : 0}`);
    expect(renderPrometheus(withTrip as unknown as Report).split("\n")).toEqual([
      ...help("up", "1 when the probe answered what was asked, 0 when it could not."),
      "postcopy_probe_up 1",
      ...help("supported", "1 when QEMU can use postcopy-ram here (with --migrate or --qemu: what they found)."),
      "postcopy_probe_supported 0",
      ...help("probe_supported", "1 when the probe's own checks say the QEMU that will run can."),
      "postcopy_probe_probe_supported 0",
      ...help("capability", "1 when a userfaultfd consumer can work here."),
      ...CAPABILITIES.map((c) => `postcopy_probe_capability{capability="${c}"} ${c === "criu-lazy-pages" ? 1 : 0}`),
      ...help("check", "1 on the status each check has, 0 on the others."),
      ...statuses("page-size", "pass"),
      ...statuses("uffd-open", "fail"),
      ...statuses("uffd-api", "skip"),
      ...help(
        "round_trip_seconds",
        "The kernel-mode write fault round trip, thread start to join, when both faults were served.",
      ),
      "postcopy_probe_round_trip_seconds 0.0000015",
      ...help(
        "migration_ok",
        "1 when --migrate's postcopy migration completed with pages requested, 0 when it failed.",
      ),
      "postcopy_probe_migration_ok 0",
      ...help(
        "migration_blocktime_seconds",
        "The destination's postcopy-blocktime in --migrate: how long its vCPUs waited for pages.",
      ),
      "postcopy_probe_migration_blocktime_seconds 0.027",
      ...help(
        "migration_pages_requested",
        "The pages the destination asked the source for in --migrate (ram.postcopy-requests).",
      ),
      "postcopy_probe_migration_pages_requested 812",
      ...help("info", "The probe's version and the context it answered for."),
      'postcopy_probe_info{version="0.1.0",kernel="6.1.0",user="qemu",uid="107"} 1',
      "",
    ]);
  });

  test("renderJson() escapes what a terminal acts on (DEL, C1, format, line separators), and decodes to the same", () => {
    const path = "/A\u202eB\u2028C\u009bD\u007fE\u001bF\u{e0001}G";
    const text = renderJson({ ...report, checks: [{ ...report.checks[0], detail: path }] } as unknown as Report);
    expect(text).toContain(String.raw`"detail": "/A\u202eB\u2028C\u009bD\u007fE\u001bF\udb40\udc01G"`);
    expect(/[\u007f-\u009f\u2028\u202e]/.test(text)).toBe(false);
    expect(JSON.parse(text).checks[0].detail).toBe(path);
  });

  test("renderPrometheus() gives no round-trip time for a round trip that failed", () => {
    const failed = { ...report, roundTrip: { ok: false, ns: 1500 } } as unknown as Report;
    expect(
      renderPrometheus(failed)
        .split("\n")
        .filter((l) => l.includes("round_trip")),
    ).toEqual([]);
  });

  const promtool = Bun.which("promtool");
  test.skipIf(!promtool || !isRoot)("promtool check metrics accepts a real run's output and an error document", () => {
    for (const args of [
      ["--format", "prometheus"],
      ["--format", "prometheus", "--bogus"],
    ]) {
      const run = cli(args);
      const check = Bun.spawnSync([promtool!, "check", "metrics"], { stdin: new TextEncoder().encode(run.stdout) });
      expect([check.exitCode, check.stdout.toString() + check.stderr.toString()]).toEqual([0, ""]);
    }
  });

  test.skipIf(!isRoot)("--output replaces only a regular file, and a failed write names the write", () => {
    const devNull = cli(["--json", "--output", "/dev/null"]);
    expect([devNull.code, devNull.stderr.split("\n")[0]]).toEqual([
      2,
      'postcopy-probe: Cannot write "/dev/null": it is a character device, not a regular file',
    ]);
    expect(statSync("/dev/null").isCharacterDevice()).toBe(true);
    const fifo = `${world}/output-fifo`;
    Bun.spawnSync(["mkfifo", fifo]);
    const toFifo = cli(["--output", fifo]);
    expect([toFifo.code, toFifo.stderr]).toEqual([
      2,
      `postcopy-probe: Cannot write "${fifo}": it is a FIFO, not a regular file\n`,
    ]);
    const ro = `${world}/read-only`;
    mkdirSync(ro, { recursive: true });
    const prefix = [...inNamespace(`mount -t tmpfs -o ro none ${ro} && exec "$@"`), "sh"];
    const run = cli(["--format", "prometheus", "--output", `${ro}/postcopy.prom`], { prefix });
    expect([run.code, run.stderr.split("\n")[0]]).toEqual([
      2,
      `postcopy-probe: Cannot write "${ro}/postcopy.prom": EROFS`,
    ]);
  });

  test("--output writes the whole document and leaves no temporary file; a failure leaves nothing", () => {
    const dir = `${world}/textfile`;
    mkdirSync(dir);
    const run = cli(["--format", "prometheus", "--output", `${dir}/postcopy.prom`]);
    expect([run.code === 0 || run.code === 1, run.stdout]).toEqual([true, ""]);
    expect(readdirSync(dir)).toEqual(["postcopy.prom"]);
    expect(readFileSync(`${dir}/postcopy.prom`, "utf8")).toStartWith("# HELP postcopy_probe_up ");
    const bad = cli(["--json", "--output", `${world}/no-such-dir/x.json`]);
    expect([bad.code, bad.stdout, bad.stderr.split("\n")[0]]).toEqual([
      2,
      "",
      `postcopy-probe: Cannot write "${world}/no-such-dir/x.json": ENOENT`,
    ]);
  });
});

describe("the package and the binary", () => {
  test("npm pack holds only the probe, its ABI, each option's file, the manifest, README and LICENSE", () => {
    const pack = Bun.spawnSync(["npm", "pack", "--dry-run", "--json"], { cwd: import.meta.dir });
    const [{ files }] = JSON.parse(pack.stdout.toString()) as Array<{ files: Array<{ path: string }> }>;
    expect(files.map((f) => f.path).sort()).toEqual([
      "LICENSE",
      "README.md",
      "apparmor.ts",
      "bench.ts",
      "context.ts",
      "ffi.ts",
      "migrate.ts",
      "package.json",
      "pid.ts",
      "probe.ts",
      "qemu.ts",
      "seccomp.ts",
      "textfile.ts",
      "vm.ts",
    ]);
    const pkg = JSON.parse(readFileSync(`${import.meta.dir}/package.json`, "utf8"));
    expect([pkg.bin, pkg.dependencies, readFileSync(`${import.meta.dir}/probe.ts`, "utf8").split("\n")[0]]).toEqual([
      { "postcopy-probe": "probe.ts" },
      undefined,
      "#!/bin/sh",
    ]);
  });

  test.skipIf(!isRoot)("the standalone x64 binary gives the same verdict as bun probe.ts", () => {
    // The build script itself, for one target: what `npm run build` ships.
    const build = Bun.spawnSync(["bash", `${import.meta.dir}/.ci/build`, "linux-x64"]);
    expect([build.exitCode, build.stderr.toString()]).toEqual([0, ""]);
    const verdict = (stdout: string) => {
      const r = JSON.parse(stdout) as Report;
      return { postcopy: r.postcopy, checks: r.checks.map((c) => `${c.id}:${c.status}`), capabilities: r.capabilities };
    };
    const binary = Bun.spawnSync([`${import.meta.dir}/dist/postcopy-probe-linux-x64`, "--json"]);
    expect(binary.exitCode).toBe(0);
    expect(verdict(binary.stdout.toString())).toEqual(verdict(cli(["--json"]).stdout));
  });

  const readelf = Bun.which("readelf");
  test.skipIf(!readelf)(
    "the musl binaries need exactly what the README says: musl and libstdc++.so.6 (needs readelf)",
    () => {
      // On a machine that never built one, Bun first downloads the musl runtime and says so on stderr.
      const build = Bun.spawnSync(["bash", `${import.meta.dir}/.ci/build`, "linux-x64-musl"]);
      expect(build.exitCode).toBe(0);
      const dynamic = Bun.spawnSync([readelf!, "-d", `${import.meta.dir}/dist/postcopy-probe-linux-x64-musl`]);
      const needed = [...dynamic.stdout.toString().matchAll(/\(NEEDED\)\s+Shared library: \[(.+)\]/g)].map((m) => m[1]);
      expect(needed).toEqual(["libstdc++.so.6", "libc.musl-x86_64.so.1"]);
      expect(readFileSync(`${import.meta.dir}/README.md`, "utf8")).toContain(
        "`-linux-x64-musl` and `-linux-arm64-musl` are dynamically linked against musl and `libstdc++.so.6`\n(on Alpine: `apk add libstdc++`)",
      );
    },
  );

  // Node 22.18+ runs .ts files; this Node may be older, then there is nothing to run.
  const node = Bun.which("node");
  const nodeRunsTs =
    node !== null && Bun.spawnSync([node, "-e", "process.exit(process.features.typescript ? 0 : 1)"]).exitCode === 0;
  test.skipIf(!nodeRunsTs)("under Node the probe says in one line that it needs Bun", () => {
    const run = Bun.spawnSync([node!, `${import.meta.dir}/probe.ts`]);
    expect([run.exitCode, run.stdout.toString(), run.stderr.toString()]).toEqual([
      2,
      "",
      "postcopy-probe needs Bun: with Bun on PATH, run it as a program: ./probe.ts\n",
    ]);
  });
});

// ── What a run does to the host: the README's effects table, proven by a trace ──

/**
 * A directory another user wrote, as root may run the probe from: a bunfig.toml whose preload leaves a mark, a
 * .env that would make the probe a --migrate launcher (which refuses to run: exit 127), package.json, tsconfig.json.
 */
function hostileDir() {
  const dir = mkdtempSync(`${tmpdir()}/postcopy-probe-hostile-`);
  hostiles.push(dir);
  const files: Record<string, string> = {
    "evil.js": `require("fs").writeFileSync(${JSON.stringify(`${dir}/RAN`)}, String(process.getuid()))`,
    "bunfig.toml": 'preload = ["./evil.js"]\n',
    ".env": "POSTCOPY_PROBE_LAUNCH=1\n",
    "package.json": '{ "name": "tenant" }',
    "tsconfig.json": "{}",
    // Found through a relative $PATH entry, this would be the QEMU whose version decides.
    "qemu-system-x86_64": "#!/bin/sh\necho 'QEMU emulator version 99.0.0'\n",
  };
  for (const [name, text] of Object.entries(files)) writeFileSync(`${dir}/${name}`, text);
  // Libraries named as a C library may be: loaded from here, each would leave its mark.
  for (const name of ["libc.so.6", "libc.musl-x86_64.so.1", "libc.so"])
    copyFileSync(evilLibrary(dir), `${dir}/${name}`);
  for (const name of [...Object.keys(files), "."]) chownSync(`${dir}/${name}`, 65534, 65534);
  chmodSync(dir, 0o777);
  return dir;
}
/** A shared library whose constructor leaves a mark (LOADED) in `dir`, built once per directory. */
function evilLibrary(dir: string) {
  const source = `${dir}/evil.c`;
  writeFileSync(
    source,
    `#include <stdio.h>\n__attribute__((constructor)) static void mark(void) { fclose(fopen("${dir}/LOADED", "w")); }\n`,
  );
  const built = Bun.spawnSync([cc!, "-shared", "-fPIC", "-o", `${dir}/evil.so`, source]);
  if (built.exitCode !== 0) throw new Error(built.stderr.toString());
  return `${dir}/evil.so`;
}
/** One system call as `strace -ff -y` logs it: its name, its arguments as written, and what it returned. */
type Call = { pid: string; name: string; args: string; ret: string };
/**
 * Runs `argv` under `strace -ff -y` (one log per process: no interleaved lines; each fd shown with its path) from
 * `cwd`, with HOME and XDG_CACHE_HOME in empty directories; what each process called, and the run's outcome.
 */
function traced(argv: string[], o: { cwd: string; prefix?: string[]; env?: Record<string, string> }) {
  const logs = mkdtempSync(`${world}/trace-`);
  const home = mkdtempSync(`${world}/home-`);
  // A relative entry first, as a careless root's $PATH may have: nothing may be looked for there.
  const env = { PATH: `.:${world}:/usr/local/bin:/usr/bin:/bin`, HOME: home, XDG_CACHE_HOME: home, ...o.env };
  const strace = [strace_!, "-ff", "-y", "-qq", "-s", "256", "-o", `${logs}/t`];
  const run = Bun.spawnSync([...strace, ...(o.prefix ?? []), ...argv], { cwd: o.cwd, env });
  const calls: Call[] = readdirSync(logs).flatMap((file) =>
    readFileSync(`${logs}/${file}`, "latin1")
      .split("\n")
      .flatMap((line) => {
        const m = line.match(/^(\w+)\((.*)\)\s+= (.*)$/);
        return m ? [{ pid: file, name: m[1], args: m[2], ret: m[3] }] : [];
      }),
  );
  return { code: run.exitCode, stdout: run.stdout.toString(), stderr: run.stderr.toString(), calls, home };
}
const strace_ = Bun.which("strace");
const hostiles: string[] = [];
afterAll(() => {
  for (const dir of hostiles) rmSync(dir, { recursive: true, force: true });
});
/** Calls that change files, their names or their metadata: none is an effect of a run. */
const CHANGES =
  /^(mkdir|mkdirat|rmdir|unlink|unlinkat|rename|renameat2?|link|linkat|symlink|symlinkat|chmod|fchmod|fchmodat2?|chown|fchown|fchownat|lchown|truncate|mknod|mknodat|mount|umount2|setxattr|lsetxattr|fsetxattr|removexattr|utimensat|socket|connect|bind)$/;
/** Where a run may read (the README's effects table): the kernel's and the host's files, the libraries, the probe's. */
const READS = [/^\/(proc|sys|etc|usr|lib|lib64|run\/sysctl\.d)(\/|$)/, /^\/dev\/(userfaultfd|urandom|null)$/, /^\/$/];
/** The programs a run executes: the shebang's sh and what it runs (true, readlink, env), then Bun. */
const EXECUTES = ["probe.ts", "true", "readlink", "env", "bun"];
/**
 * Each effect of a traced run that the README's table does not list: a program it runs, a file it opens for writing
 * (but /dev/userfaultfd, and /dev/null for the shebang's sh), a file it reads outside the table's places (the
 * probe's own and Bun's are in `own`), a file changed, a socket, a write to a file, or the cache it was given used.
 */
function unlisted(t: ReturnType<typeof traced>, own: string[], prefixes: string[] = []) {
  const found: string[] = [];
  // A prefix (setpriv, the seccomp loader) runs first in a process of its own: from the exec that ends it on.
  const byPid = Map.groupBy(t.calls, (c) => c.pid);
  for (const calls of byPid.values()) {
    const execs = calls.filter((c) => c.name === "execve" && c.ret === "0");
    const isPrefix = (c: Call) => prefixes.some((p) => c.args.startsWith(`"${p}"`));
    const start = execs.some(isPrefix) ? execs[execs.findLastIndex(isPrefix) + 1] : execs[0];
    for (const c of start ? calls.slice(calls.indexOf(start)) : calls) {
      const path = c.args.match(/^(?:AT_FDCWD, |\d+<([^>]*)>, )?"([^"]*)"/);
      const file = path ? (path[2].startsWith("/") ? path[2] : `${path[1] ?? "."}/${path[2]}`) : null;
      if (c.name === "execve" && c.ret === "0" && !EXECUTES.includes(basename(file ?? "")))
        found.push(`executes ${file}`);
      if (/^(open|openat|openat2|creat)$/.test(c.name) && file) {
        const writing = c.name === "creat" || /O_WRONLY|O_RDWR|O_CREAT|O_TRUNC|O_APPEND/.test(c.args);
        const allowed = writing ? /^\/dev\/(userfaultfd|null)$/.test(file) : READS.some((r) => r.test(file));
        if (!allowed && !own.some((dir) => file === dir || file.startsWith(`${dir}/`)))
          found.push(`${writing ? "opens for writing" : "reads"} ${file}`);
      }
      if (CHANGES.test(c.name)) found.push(`${c.name}(${c.args.slice(0, 80)})`);
      if (c.name === "ftruncate" && !c.args.includes("memfd:postcopy-probe")) found.push(`ftruncate(${c.args})`);
      if (/^(write|writev|pwrite64)$/.test(c.name) && /^\d+<\//.test(c.args) && !/^[12]</.test(c.args))
        found.push(`writes to ${c.args.match(/^\d+<([^>]*)>/)?.[1]}`);
    }
  }
  if (readdirSync(t.home).length) found.push(`writes into its HOME or XDG_CACHE_HOME: ${readdirSync(t.home)}`);
  return found;
}

describe("what a run does to the host: only what the README's effects table lists", () => {
  const skip = !isRoot || !strace_ || !cc;
  const seccompLoader = "/usr/bin/python3";
  const hasSeccomp = Bun.spawnSync([seccompLoader, "-c", "import seccomp"]).exitCode === 0;
  const NOBODY = ["/usr/bin/setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"];
  /** Docker's default profile, loaded as a container runtime loads it, around the probe. */
  const DOCKER = () => {
    copyFileSync(`${import.meta.dir}/test/seccomp-run.py`, `${world}/seccomp-run.py`);
    copyFileSync(`${import.meta.dir}/test/docker-default.json`, `${world}/docker-default.json`);
    return [seccompLoader, `${world}/seccomp-run.py`, `${world}/docker-default.json`, ""];
  };
  const contexts: Array<[string, () => string[], string[], boolean]> = [
    ["as root", () => [], [], false],
    ["as uid 65534", () => NOBODY, [NOBODY[0]], false],
    ["under Docker's seccomp profile", DOCKER, [seccompLoader], !hasSeccomp],
  ];
  test.each(contexts)(
    "the default run %s, from a directory another user wrote, on a cold cache: nothing beyond the table",
    (_, prefix, prefixes, unavailable) => {
      if (skip || unavailable) return;
      const dir = hostileDir();
      const t = traced([`${world}/probe.ts`, "--json"], { cwd: dir, prefix: prefix() });
      expect([t.code, t.stderr]).toEqual([prefixes.length ? 1 : 0, ""]);
      expect(JSON.parse(t.stdout).schema).toBe("postcopy-probe/1");
      expect(unlisted(t, [world], prefixes)).toEqual([]);
      expect([existsSync(`${dir}/RAN`), existsSync(`${dir}/LOADED`)]).toEqual([false, false]);
    },
  );
});

describe("nothing of the working directory is read or run, by any way to run the probe as a program", () => {
  const skip = !isRoot || !strace_ || !cc;
  test.skipIf(skip)("the shebang (npm's bin, npx, bunx), and --user's child: not read, not run", () => {
    const dir = hostileDir();
    for (const args of [["--json"], ["--json", "--user", "nobody"]]) {
      const t = traced([`${world}/probe.ts`, ...args], { cwd: dir });
      expect([t.stderr, JSON.parse(t.stdout).schema]).toEqual(["", "postcopy-probe/1"]);
      expect(unlisted(t, [world])).toEqual([]);
    }
    expect([existsSync(`${dir}/RAN`), existsSync(`${dir}/LOADED`)]).toEqual([false, false]);
  });

  test.skipIf(!cc)(
    "why main() works in /: Bun's dlopen loads a library the system has not by its name from the working directory",
    () => {
      const dir = hostileDir();
      copyFileSync(evilLibrary(dir), `${dir}/libnone.so`);
      const script = 'try { require("bun:ffi").dlopen("libnone.so", { mark: { args: [], returns: "void" } }); } catch {}';
      Bun.spawnSync([process.execPath, "-e", script], { cwd: dir });
      expect(existsSync(`${dir}/LOADED`)).toBe(true);
    },
  );

  test.skipIf(skip)("the standalone binary, and --user's child: not read, not run", () => {
    const binary = `${import.meta.dir}/dist/postcopy-probe-linux-x64`;
    expect(Bun.spawnSync(["bash", `${import.meta.dir}/.ci/build`, "linux-x64"]).exitCode).toBe(0);
    const dir = hostileDir();
    EXECUTES.push(basename(binary));
    for (const args of [["--json"], ["--json", "--user", "nobody"]]) {
      const t = traced([binary, ...args], { cwd: dir });
      expect([t.stderr, JSON.parse(t.stdout).schema]).toEqual(["", "postcopy-probe/1"]);
      expect(unlisted(t, [dirname(binary)])).toEqual([]);
    }
    EXECUTES.pop();
    expect([existsSync(`${dir}/RAN`), existsSync(`${dir}/LOADED`)]).toEqual([false, false]);
  });

  test.skipIf(!isRoot)(
    "the packed tarball through npx (Bun from this checkout), and --user's child: nothing run",
    () => {
      const pack = Bun.spawnSync(["npm", "pack", "--silent", "--pack-destination", world], { cwd: import.meta.dir });
      const tarball = `${world}/${pack.stdout.toString().trim()}`;
      const dir = hostileDir();
      for (const args of [["--json"], ["--json", "--user", "nobody"]]) {
        const npx = ["npx", "-y", "--prefer-offline", "-p", `${import.meta.dir}/node_modules/bun`, "-p", tarball];
        const run = Bun.spawnSync([...npx, "postcopy-probe", ...args], { cwd: dir });
        expect(JSON.parse(run.stdout.toString()).schema).toBe("postcopy-probe/1");
        expect(run.exitCode).toBeLessThan(2);
      }
      expect([existsSync(`${dir}/RAN`), existsSync(`${dir}/LOADED`)]).toEqual([false, false]);
    },
    60_000,
  );
});
