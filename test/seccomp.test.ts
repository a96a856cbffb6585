/** Tests of seccomp.ts: a process's seccomp filters, read and run as the kernel runs them. */

import { describe, expect, test } from "bun:test";
import { copyFileSync, existsSync, mkdtempSync, readFileSync, rmdirSync, writeFileSync } from "node:fs";
import * as K from "../ffi.ts";
import { actionName, combined, run, verdicts } from "../seccomp.ts";
import type { Report } from "../types.ts";
import {
  causes,
  cc,
  check,
  cli,
  DOCKER_CAPS,
  isRoot,
  procOf,
  ROOT,
  realQemu,
  routesOf,
  standIn,
  unprivileged,
  withQemu,
  withTarget,
  world,
} from "./helpers.ts";

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
  copyFileSync(`${ROOT}/test/seccomp-run.py`, seccompRun);
  const python =
    existsSync("/usr/bin/python3") && Bun.spawnSync(["/usr/bin/python3", "-c", "import seccomp"]).exitCode === 0;
  const skip = !isRoot || !realQemu || !python;
  /** A Docker-format profile: Docker's default with `also` added to its rules, or one of its own. */
  function profile(name: string, also: object[] = [], base?: object) {
    const docker = JSON.parse(readFileSync(`${ROOT}/test/docker-default.json`, "utf8"));
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
