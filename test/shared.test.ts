/** Tests of shared.ts: the helpers every stage uses, which routes each consumer takes, and QEMU's registration. */

import { describe, expect, test } from "bun:test";
import type { Sys } from "../ffi.ts";
import * as K from "../ffi.ts";
import {
  absolutePath,
  answerOf,
  capBit,
  field,
  needs,
  REGISTRATIONS,
  registered,
  sanitize,
  sh,
  shown,
  uidMapOf,
  whole,
  within,
  workingDirectory,
} from "../shared.ts";
import type { Answers } from "../types.ts";
import { count, facts, fail, isRoot, noLeak, sys } from "./helpers.ts";

describe("reading what the host and a target wrote", () => {
  test("field() reads a value from its own line only: an empty one is empty, never the next line's", () => {
    const status = "Name:\tqemu\nGroups:\nNStgid:\t4321\nCapEff:\t0000000000080000\n";
    expect([field(status, "Groups"), field(status, "NStgid"), field(status, "CapEff"), field(status, "Uid")]).toEqual([
      "",
      "4321",
      "0000000000080000",
      null,
    ]);
  });

  test("whole(), uidMapOf() and capBit() give null for what they cannot read, never a wrong fact", () => {
    expect([whole(" 42\n"), whole("-1"), whole("1.5"), whole("max"), whole(""), whole(null)]).toEqual([
      42,
      -1,
      null,
      null,
      null,
      null,
    ]);
    expect([uidMapOf("         0          0 4294967295\n"), uidMapOf(null)]).toEqual(["0 0 4294967295", null]);
    // CAP_SYS_PTRACE is bit 19: 0x80000.
    expect([capBit("0000000000080000", 19n), capBit("000001ffffffffff", 19n), capBit("0", 19n)]).toEqual([
      true,
      true,
      false,
    ]);
    expect([capBit("zz", 19n), capBit("00000000000000000", 19n), capBit(null, 19n)]).toEqual([null, null, null]);
  });

  test("shown() and sanitize() keep a target's control and bidirectional characters off the terminal", () => {
    expect(shown("qemu\x1b[2J\u202e\n\tx\u2028")).toBe("qemu\\x1b[2J\\u{202e}\\n\\tx\\u{2028}");
    expect(sanitize("  error:\x1b[31m\r\nno  ")).toBe("error: [31m no");
    expect(sanitize("x".repeat(300))).toBe(`${"x".repeat(200)}…`);
  });

  test("sh() makes any value one word a root shell reads back exactly, and leaves a plain one as it is", () => {
    const values = ["/usr/bin/qemu-system-x86_64", "it's", "$(touch /nonexistent/x)", "a b\nc", "`id`;*", "", "-x"];
    expect(values.map(sh).slice(0, 2)).toEqual(["/usr/bin/qemu-system-x86_64", `'it'\\''s'`]);
    for (const value of values) {
      const run = Bun.spawnSync(["/bin/sh", "-c", `printf %s ${sh(value)}`]);
      expect([value, run.stdout.toString()]).toEqual([value, value]);
    }
  });

  test("relative arguments and $PATH entries never reach the directory the probe was run from", () => {
    expect(absolutePath({ PATH: ".:/usr/bin::bin:/bin" })).toBe("/usr/bin:/bin");
    // The probe works in / (main()); PWD says where it was started, and only an absolute PWD counts.
    const cwd = process.cwd();
    process.chdir("/");
    try {
      expect([
        workingDirectory({ PWD: "/srv/tenant" }),
        workingDirectory({ PWD: "srv" }),
        workingDirectory({}),
      ]).toEqual(["/srv/tenant", "/", "/"]);
    } finally {
      process.chdir(cwd);
    }
  });

  test("within() says whether a promise settled in time", async () => {
    const never = new Promise(() => {});
    expect([await within(Bun.sleep(1), 1000), await within(never, 10)]).toEqual([true, false]);
  });
});

describe("which route each consumer takes (README: Which route each consumer takes)", () => {
  const answers = (node: string, device: string, syscall: string): Answers => ({
    "device-node": node,
    device,
    syscall,
    "user-mode-only": "ok",
  });
  test("QEMU 8.0+ takes the device when it opens, with no way back; Firecracker falls back only when it is absent; Cloud Hypervisor on any error of the device", () => {
    const cases = [
      // The node opens, its ioctl is refused (an LSM, a filter): only Cloud Hypervisor falls back.
      answers("ok", "EPERM", "ok"),
      answers("EACCES", "EACCES", "ok"),
      answers("ENOENT", "ENOENT", "ok"),
      // The device serves and the syscall is refused (the sysctl): every device-first consumer opens one.
      answers("ok", "ok", "EPERM"),
      // Neither: Cloud Hypervisor reports the syscall's error, as its code does.
      answers("EACCES", "EACCES", "EPERM"),
    ];
    const consumers = ["qemu<8.0", "qemu>=8.0", "criu", "firecracker", "cloud-hypervisor"] as const;
    expect(cases.map((a) => consumers.map((c) => answerOf(c, a)))).toEqual([
      ["ok", "EPERM", "ok", "EPERM", "ok"],
      ["ok", "ok", "ok", "EACCES", "ok"],
      ["ok", "ok", "ok", "ok", "ok"],
      ["EPERM", "ok", "EPERM", "ok", "ok"],
      ["EPERM", "EPERM", "EPERM", "EACCES", "EPERM"],
    ]);
  });
});

describe("QEMU's registration (registered()), on the real kernel and where a call fails", () => {
  test("needs(): the ioctls QEMU checks after UFFDIO_REGISTER for each kind of memory", () => {
    expect(REGISTRATIONS.map((r) => [r.id, needs(r).ioctls])).toEqual([
      ["register-anon", ["WAKE", "COPY", "ZEROPAGE"]],
      ["register-hugetlb", ["WAKE", "COPY"]],
      ["register-shmem", ["WAKE", "COPY", "ZEROPAGE"]],
      ["write-protect", ["WRITEPROTECT"]],
    ]);
  });

  test.skipIf(!isRoot)(
    "each failing call is named, and the uffd, memfd and mapping are released whatever fails",
    async () => {
      const range = { kind: "shmem" as const, len: facts.pageSize, mode: K.UFFDIO_REGISTER_MODE_MISSING, features: 0n };
      const failing = (call: "ioctl" | "memfdCreate" | "ftruncate" | "mmap", at: bigint | null = null): Sys => ({
        ...sys,
        [call]: (...args: unknown[]) =>
          at === null || args[1] === at ? fail("EINVAL") : (sys[call] as (...a: unknown[]) => unknown)(...args),
      });
      const before = count();
      const answers = [
        await registered(failing("ioctl", K.UFFDIO_API), facts, "device", range, () => "used"),
        await registered(failing("memfdCreate"), facts, "device", range, () => "used"),
        await registered(failing("ftruncate"), facts, "device", range, () => "used"),
        await registered(failing("mmap"), facts, "device", range, () => "used"),
        await registered(failing("ioctl", K.UFFDIO_REGISTER), facts, "device", range, () => "used"),
        await registered(sys, facts, "device", range, () => "used"),
      ];
      expect(answers).toEqual([
        "UFFDIO_API: EINVAL",
        "memfd_create: EINVAL",
        "ftruncate: EINVAL",
        "mmap: EINVAL",
        "UFFDIO_REGISTER: EINVAL",
        "used",
      ]);
      noLeak(before, count());
    },
  );
});
