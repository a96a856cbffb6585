/**
 * What the tests share: the probe's own view of this host (facts, options), a world-readable copy of the package with
 * Bun beside it (so uid 65534 can run it), fake and stand-in QEMUs, real QEMUs behind a prefix (another user, a
 * namespace, a seccomp filter), a small QMP client, and the leak counter. Each test file imports what it uses.
 */

import { expect } from "bun:test";
import {
  chmodSync,
  copyFileSync,
  existsSync,
  linkSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { dirname } from "node:path";
import Ajv2020 from "ajv/dist/2020";
import { diagnose } from "../diagnosis.ts";
import type { R } from "../ffi.ts";
import * as K from "../ffi.ts";
import { CAUSES as PID_CAUSES } from "../pid.ts";
import { parseArgs, readFacts } from "../probe.ts";
import { CAUSES as QEMU_CAUSES } from "../qemu.ts";
import { CAUSES as SELINUX_CAUSES } from "../selinux.ts";
import { CAPABILITIES } from "../shared.ts";
import type { Capability, Check, Evidence, Facts, Qemu, Report } from "../types.ts";
import { CAUSES as VM_CAUSES } from "../vm.ts";

/** The checkout: the package's files, its scripts and the test fixtures. */
export const ROOT = dirname(import.meta.dir);
export const sys = K.loadSys();
export const facts = readFacts(sys);
export const { help: _, version: __, ...opts } = parseArgs([]);
export const isRoot = process.getuid!() === 0;
export const unprivileged = readFileSync("/proc/sys/vm/unprivileged_userfaultfd", "utf8").trim();
export const realQemu = Bun.which("qemu-system-x86_64");
/** Debian trixie's QEMU 10, when ../shared/qemu10 installed it. */
export const qemu10Wrapper = `${ROOT}/../shared/qemu10/qemu10`;
export const qemu10 =
  existsSync("/srv/qemu10/usr/bin/qemu-system-x86_64") && existsSync(qemu10Wrapper) ? qemu10Wrapper : null;
export const fail = (name: string): R => ({ ret: -1, errno: K.errnoOf(name) });
export const statuses = (r: Report) => Object.fromEntries(r.checks.map((c) => [c.id, c.status]));
export const check = (r: Report, id: string) => r.checks.find((c) => c.id === id)!;
export const causes = (r: Report) => r.diagnosis.map((d) => d.cause);
/** What each route answered, as uffd-open found it. */
export const routesOf = (r: Report) => check(r, "uffd-open").routes as Record<string, string>;
/** Each cause with what it blocks, as plain strings. */
export const blocked = (r: Report) => r.diagnosis.map((d): [string, string[]] => [d.cause, d.blocks]);
/** diagnose() from facts (evidence read as nothing unless given), checks holding uffd-open's routes, and the rest. */
export const diagnoseOf = (
  f: Facts & Partial<Evidence>,
  checks: Check[],
  failing: Capability[] = [...CAPABILITIES],
  qemu: Qemu | null = null,
  vm: Check[] = [],
  required: Capability[] = ["postcopy-ram"],
) => {
  const a = checks.find((c) => c.id === "uffd-open")!.routes!;
  // The rows a QEMU read adds, and --pid's: their gates read what only they set.
  const more = {
    ...(qemu?.version ? QEMU_CAUSES : {}),
    ...(f.domains ? SELINUX_CAUSES : {}),
    ...PID_CAUSES,
    ...VM_CAUSES,
  };
  const seen = { f: { sysctlSource: null, ...f }, a, checks: [...checks, ...vm], failing, qemu, required };
  return diagnose(seen, more);
};
export const QEMU_CAPS = [
  ...["postcopy-ram", "postcopy-hugetlbfs", "postcopy-shmem", "background-snapshot", "postcopy-blocktime"],
  "postcopy-multifd",
];

/**
 * What a leak by the probe would raise: open fds, mappings of the shapes the probe makes (one
 * read-write anonymous page, a memfd, a huge page) and threads named like this one (a pthread
 * inherits the name; Bun's own threads come and go, so only a rise counts).
 */
export function count() {
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
export const noLeak = (before: ReturnType<typeof count>, after: ReturnType<typeof count>) => {
  expect({ fds: after.fds, mappings: after.mappings }).toEqual({ fds: before.fds, mappings: before.mappings });
  expect(after.threads).toBeLessThanOrEqual(before.threads);
};

/** A process's command line, or "" once it is gone. */
/** A file of /proc/PID, or "" once the process is gone (it may go between the listing and the read). */
export const procOf = (pid: string, name: string) => {
  try {
    return readFileSync(`/proc/${pid}/${name}`, "latin1");
  } catch {
    return "";
  }
};
export const cmdlineOf = (pid: string) => procOf(pid, "cmdline");
export const pids = () => readdirSync("/proc").filter((p) => /^\d+$/.test(p));
/** A world-readable directory for this run: bun, the probe, fake QEMUs; uid 65534 can reach it. */
export const world = mkdtempSync(`${tmpdir()}/postcopy-probe-test-`);
chmodSync(world, 0o755);
/** The package's files, as npm packs them: the probe and each option's file. */
export const shipped: string[] = JSON.parse(readFileSync(`${ROOT}/package.json`, "utf8")).files;
for (const file of [...shipped.filter((f) => f.endsWith(".ts")), "package.json"])
  copyFileSync(`${ROOT}/${file}`, `${world}/${file}`);
try {
  linkSync(process.execPath, `${world}/bun`);
} catch {
  copyFileSync(process.execPath, `${world}/bun`); // another filesystem: a copy keeps the mode
}
chmodSync(`${world}/bun`, 0o755);
process.on("exit", () => rmSync(world, { recursive: true, force: true }));

/** A directory holding a script named qemu-system-x86_64 with `body`, to put first on PATH. */
export function qemuDir(name: string, body: string) {
  const dir = `${world}/${name}`;
  mkdirSync(dir, { recursive: true, mode: 0o755 });
  writeFileSync(`${dir}/qemu-system-x86_64`, `#!/bin/sh\n${body}\n`, { mode: 0o755 });
  return dir;
}
/** A QEMU that only holds its version in its bytes, as a binary does: what the probe reads, never runs. */
export function qemuOf(version: string) {
  const dir = `${world}/qemu-${version}`;
  mkdirSync(dir, { recursive: true, mode: 0o755 });
  writeFileSync(`${dir}/qemu-system-x86_64`, `\x7fELF (fake)\0QEMU emulator version ${version} (fake)\0`, {
    mode: 0o755,
  });
  return dir;
}
export const [QEMU7, QEMU10] = [qemuOf("7.2.0"), qemuOf("10.0.0")];
export const NO_QEMU = "/nonexistent";
export const pathWith = (dir: string) => `${dir}:/usr/local/bin:/usr/bin:/bin`;

export type Run = { code: number | null; stdout: string; stderr: string; report: Report };
/** Runs the CLI as a child: optionally as uid 65534, behind a prefix (unshare, prlimit), with a PATH. */
export function cli(
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
export function traceOpens(argv: string[]) {
  const log = `${world}/opens-${Math.random().toString(36).slice(2)}.strace`;
  const run = Bun.spawnSync([Bun.which("strace")!, "-f", "-qq", "-e", "trace=open,openat,openat2", "-o", log, ...argv]);
  return { stdout: run.stdout.toString(), opens: readFileSync(log, "utf8").split("\n") };
}

/** x86_64's seccomp filter, as struct sock_filter rows [code, jt, jf, k]: userfaultfd(2) -> ERRNO(`errno`), all else ALLOW. */
export const userfaultfdRefused = (errno: string) => [
  [0x20, 0, 0, 4],
  [0x15, 0, 3, 0xc000003e],
  [0x20, 0, 0, 0],
  [0x15, 0, 1, 323],
  [0x06, 0, 0, 0x00050000 | K.errnoOf(errno)],
  [0x06, 0, 0, 0x7fff0000],
];
/** A script that installs a seccomp filter (as a container runtime does), then runs main(); by default one failing userfaultfd(2) with `errno`. */
export function seccompScript(errno: "EPERM" | "ENOSYS", insns = userfaultfdRefused(errno), name = `seccomp-${errno}`) {
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
export function underSeccomp(
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
export const inNamespace = (script: string) => [
  "/usr/bin/unshare",
  "-m",
  "--propagation",
  "private",
  "/bin/sh",
  "-c",
  script,
];
/** A tmpfs of our own in the namespace holding a device node `mode` for the userfaultfd minor, bound over /dev/userfaultfd. */
export function deviceOpenTo(mode: string) {
  const dir = `${world}/dev-${mode}`;
  mkdirSync(dir, { recursive: true });
  const node = `mknod -m ${mode} ${dir}/ufd c 10 ${facts.miscMinor}`;
  return inNamespace(
    `mount -t tmpfs none ${dir} && ${node} && mount --bind ${dir}/ufd /dev/userfaultfd && exec "$@"`,
  ).concat(["sh"]);
}

/** Where QEMUs of any user can make their QMP sockets. */
export const sockets = `${world}/sockets`;
mkdirSync(sockets, { mode: 0o1777 });
chmodSync(sockets, 0o1777);
export type Reply = { return?: { status?: string }; error?: { desc: string } };
/** A tiny QMP client on a unix socket: each command's reply, or an error after 3 s. */
export async function qmp(path: string) {
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
export const POSTCOPY = { capabilities: [{ capability: "postcopy-ram", state: true }] };
export const VM = ["-machine", "pc", "-m", "64", "-nodefaults", "-display", "none"];

/** A real incoming QEMU started behind `prefix` (another user, a namespace, a cgroup), with its QMP socket. */
export async function withQemu<T>(
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
export async function migrate(qemu: string, args: (side: string) => string[], seen: { dst?: string } = {}) {
  const dir = mkdtempSync(`${world}/migration-`);
  const start = (side: string, more: string[]) =>
    Bun.spawn([qemu, ...VM, ...args(side), ...more, "-qmp", `unix:${dir}/${side}.sock,server=on,wait=off`], {
      stdio: ["ignore", "ignore", side === "dst" ? "pipe" : "ignore"],
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
    for (let i = 0; i < 100; i++) {
      const now = await status();
      if (now === "failed") return now; // it failed as it started: no postcopy to start
      if (now === "active") break;
      await Bun.sleep(50);
    }
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
    // What the destination said (its errors and warnings), for a test that names them.
    seen.dst = (await new Response(dst.stderr as ReadableStream).text()).slice(0, 4096);
    rmSync(dir, { recursive: true, force: true });
  }
}

/**
 * A stand-in for a QEMU process: a small C program that holds a QEMU's version string (7.2.0, or -DVERSION's; none
 * with -DNO_VERSION), opens each file named after -hold as QEMU holds its RAM file, after -vfork N stays in vfork()
 * while its child sleeps N seconds (a main thread that cannot stop), then waits. Built once, static, so that it runs
 * in a chroot of its own too.
 */
export const STAND_IN = `#include <fcntl.h>
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
export const cc = Bun.which("cc");
/** The stand-in built as `name` in a directory of its own (linked dynamically when `flags` say so): its path. */
export function standIn(name: string, flags = ["-static"]) {
  const dir = `${world}/stand-in-${name.replace(/\W+/g, "-")}-${flags.join("").replace(/\W+/g, "")}`;
  mkdirSync(dir, { recursive: true, mode: 0o755 });
  writeFileSync(`${dir}/stand-in.c`, STAND_IN);
  const built = Bun.spawnSync([cc!, "-O2", ...flags, "-o", `${dir}/${name}`, `${dir}/stand-in.c`]);
  if (built.exitCode !== 0) throw new Error(built.stderr.toString());
  return `${dir}/${name}`;
}
/** Starts `argv` behind `prefix` (each prefix execs it, keeping the pid), waits until it is `comm`, then `use`s it. */
export async function withTarget<T>(
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
export const sample = {
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
export const pad = (s: string) => s.padEnd(72);

/** The shipped JSON Schema of postcopy-probe/1, and what it finds wrong with a document: nothing when it is valid. */
export const schema = JSON.parse(readFileSync(`${ROOT}/postcopy-probe-1.schema.json`, "utf8"));
const validate = new Ajv2020({ allErrors: true, strict: true, strictRequired: false, allowUnionTypes: true }).compile(
  schema,
);
export const complaints = (doc: unknown) =>
  validate(doc) ? [] : validate.errors!.map((e) => `${e.instancePath} ${e.message}`);

/** Docker's default capabilities (moby's defaults): the rules a profile gives them apply. */
export const DOCKER_CAPS =
  "CAP_CHOWN,CAP_DAC_OVERRIDE,CAP_FSETID,CAP_FOWNER,CAP_MKNOD,CAP_NET_RAW,CAP_SETGID,CAP_SETUID,CAP_SETFCAP,CAP_SETPCAP,CAP_NET_BIND_SERVICE,CAP_SYS_CHROOT,CAP_KILL,CAP_AUDIT_WRITE";
