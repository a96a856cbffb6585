/** Tests of probe.ts: the default run — facts, checks, round trips, capabilities, the report and its renderers, the command line, the package — and what a run does to the host, proven by a trace. */

import { afterAll, describe, expect, test } from "bun:test";
import {
  chmodSync,
  chownSync,
  copyFileSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmdirSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { basename, dirname } from "node:path";
import type { Sys } from "../ffi.ts";
import * as K from "../ffi.ts";
import { decodeFeatures, errorDocument, PATTERN_NUL, parseArgs, probe, renderHuman, renderJson } from "../probe.ts";
import { CAPABILITIES, VERSION } from "../shared.ts";
import type { Check, Report } from "../types.ts";
import {
  blocked,
  causes,
  cc,
  check,
  cli,
  cmdlineOf,
  count,
  deviceOpenTo,
  facts,
  fail,
  inNamespace,
  isRoot,
  NO_QEMU,
  noLeak,
  opts,
  pad,
  pathWith,
  pids,
  QEMU_CAPS,
  QEMU7,
  QEMU10,
  qemuDir,
  ROOT,
  realQemu,
  routesOf,
  sample,
  shipped,
  statuses,
  sys,
  traceOpens,
  underSeccomp,
  unprivileged,
  world,
} from "./helpers.ts";

describe("facts: read from the host, never a wrong one", () => {
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
        causes: causes(r),
      });
      expect(existsSync("/proc/misc")).toBe(true);
      expect([subset.code, seen(subset.report)]).toEqual([whole.code, seen(whole.report)]);
    },
  );

  test.skipIf(!isRoot)("unreadable or malformed host files are unknown, never a wrong fact", () => {
    const bad = `${world}/bad`;
    writeFileSync(bad, "not a number\n");
    writeFileSync(`${world}/passwd`, "root:x:0:0::/root:/bin/sh\nbroken line\n");
    const binds = `mount --bind ${bad} /proc/sys/vm/unprivileged_userfaultfd`;
    const prefix = inNamespace(`${binds} && mount --bind ${world}/passwd /etc/passwd && exec "$@"`).concat(["sh"]);
    const { code, report } = cli(["--json"], { prefix, path: pathWith(QEMU7) });
    expect(code).toBe(0);
    expect([report.host.unprivilegedUserfaultfd, report.host.user]).toEqual([null, "root"]);
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
    "as root every check passes: no WARN on a healthy host, huge pages reserved or not",
    async () => {
      const report = await probe(sys, facts, opts);
      expect(statuses(report)).toEqual({
        "page-size": "pass",
        "uffd-open": "pass",
        "qemu-route": "pass",
        "uffd-api": "pass",
        "uffd-features": "pass",
        "register-anon": "pass",
        "register-hugetlb": "pass",
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
    // The sysctl blocks CRIU, Firecracker and Cloud Hypervisor here, not the QEMU that passes it by its capability.
    expect(blocked(report)).toEqual([
      ["unprivileged-userfaultfd", ["criu-lazy-pages", "firecracker-uffd", "cloud-hypervisor"]],
      ["devnode-missing", ["firecracker-uffd", "cloud-hypervisor"]],
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
    expect(Object.keys(served)).toEqual(["user-read", "kernel-write", "write-protect"]);
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
      expect([served["user-read"].ok, served["kernel-write"].ok, served["write-protect"].ok]).toEqual([
        true,
        false,
        true,
      ]);
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
      expect([old.code, old.report.postcopy, causes(old.report)]).toEqual([
        1,
        false,
        // Headline first: what blocks postcopy-ram, then what blocks CRIU only.
        ["unprivileged-userfaultfd", "qemu-before-8.0", "criu-needs-ptrace"],
      ]);
      const modern = run(QEMU10);
      expect([modern.code, modern.report.postcopy, modern.report.probe.route]).toEqual([0, true, "device"]);
      expect(existsSync(`${world}/dev-0666/ufd`)).toBe(false); // the namespace's tmpfs went with it
    },
  );

  test.skipIf(!isRoot || unprivileged !== "0" || facts.miscMinor === null)(
    "cloud-hypervisor: the device when it serves, the syscall on any error of it, its open or its ioctl; each answer as QEMU and Firecracker meet it",
    () => {
      const said = (r: Report) => ({
        routes: [routesOf(r)["device-node"], routesOf(r).device, routesOf(r).syscall],
        ch: r.capabilities["cloud-hypervisor"],
        firecracker: r.capabilities["firecracker-uffd"],
        qemu7: r.probe["qemu<8.0"],
        qemu10: r.probe["qemu>=8.0"],
      });
      // USERFAULTFD_IOC_NEW (ioctl 0xaa00) refused by a filter, as root: the node opens, its uffd does not come.
      const IOC_NEW_REFUSED = [
        ...[
          [0x20, 0, 0, 4],
          [0x15, 0, 5, 0xc000003e],
          [0x20, 0, 0, 0],
          [0x15, 0, 3, 16],
          [0x20, 0, 0, 24],
        ],
        ...[
          [0x15, 0, 1, 0xaa00],
          [0x06, 0, 0, 0x00050000 | K.errnoOf("EPERM")],
          [0x06, 0, 0, 0x7fff0000],
        ],
      ];
      const runs = [
        said(cli(["--json"], { path: pathWith(QEMU7) }).report),
        said(
          underSeccomp("EPERM", ["--json"], { insns: IOC_NEW_REFUSED, name: "ioc-new", path: pathWith(QEMU7) }).report,
        ),
        said(cli(["--json"], { prefix: deviceOpenTo("0666"), nobody: true, path: pathWith(QEMU7) }).report),
        said(cli(["--json"], { nobody: true, path: pathWith(QEMU7) }).report),
      ];
      expect(runs).toEqual([
        { routes: ["ok", "ok", "ok"], ch: true, firecracker: true, qemu7: true, qemu10: true },
        { routes: ["ok", "EPERM", "ok"], ch: true, firecracker: false, qemu7: true, qemu10: false },
        { routes: ["ok", "ok", "EPERM"], ch: true, firecracker: true, qemu7: false, qemu10: true },
        { routes: ["EACCES", "EACCES", "EPERM"], ch: false, firecracker: false, qemu7: false, qemu10: false },
      ]);
      // The last: the node's mode and the sysctl both stand in Cloud Hypervisor's way, as in QEMU 10's.
      const blocking = blocked(cli(["--json"], { nobody: true, path: pathWith(QEMU7) }).report);
      expect(blocking.filter(([, caps]) => caps.includes("cloud-hypervisor")).map(([cause]) => cause)).toEqual([
        "unprivileged-userfaultfd",
        "devnode-permission",
      ]);
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
      expect(report.diagnosis.find((d) => d.cause === "unprivileged-userfaultfd")?.blocks).toEqual([
        "criu-lazy-pages",
        "cloud-hypervisor",
      ]);
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
        // The default run names the cause with a generic fix: the cgroup's own rule is --pid's to give (pid.ts).
        expect(cgroupCause.fix).toEqual([
          "docker run --device /dev/userfaultfd ...   # a container: or podman run --device",
          "systemctl set-property UNIT DeviceAllow='/dev/userfaultfd rw'   # a systemd unit",
        ]);
      } finally {
        rmdirSync(cgroup);
      }
    },
  );
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
        "  cloud-hypervisor      no",
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
        cause: "a-note",
        summary: "something worth knowing",
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
      "  a-note: something worth knowing [a note: it blocks nothing]",
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
      'postcopy-probe: Unknown capability "teleport": use postcopy-ram, postcopy-hugetlbfs, postcopy-shmem, background-snapshot, postcopy-blocktime, postcopy-multifd, criu-lazy-pages, firecracker-uffd, cloud-hypervisor',
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
    const pkg = JSON.parse(readFileSync(`${ROOT}/package.json`, "utf8"));
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

describe("the package and the binary", () => {
  /** The package's source files, and for each the files it names: imports (of values or types) and lazy loads. */
  const sources = shipped.filter((f) => f.endsWith(".ts"));
  const edges = (file: string) => {
    const code = readFileSync(`${ROOT}/${file}`, "utf8")
      .split("\n")
      .filter((line) => !/^\s*(\*|\/\/|\/\*)/.test(line));
    return [
      ...new Set(
        code
          .join("\n")
          .matchAll(/"\.\/([\w-]+\.ts)"/g)
          .map((m) => m[1]),
      ),
    ];
  };
  /** The code lines of files as the stop hook counts them: not blank, not only a comment. */
  const codeLines = (file: string) =>
    readFileSync(`${ROOT}/${file}`, "utf8")
      .split("\n")
      .filter((line) => line.trim() && !/^\s*(\/\/|\*|\/\*)/.test(line)).length;

  test("layers without a circle: nobody imports the entry point, no file reaches itself, lazily or not", () => {
    const graph = Object.fromEntries(sources.map((f) => [f, edges(f)]));
    expect(sources.filter((f) => graph[f].includes("probe.ts"))).toEqual([]);
    // One test file per source file, each runnable alone (bun test FILE).
    expect(sources.filter((f) => !existsSync(`${ROOT}/test/${f.replace(/\.ts$/, ".test.ts")}`))).toEqual([]);
    // A file reaches itself through its edges: a depth-first walk that meets a file still on its path.
    const circles: string[][] = [];
    const walk = (file: string, path: string[]) => {
      if (path.includes(file)) return circles.push([...path.slice(path.indexOf(file)), file]);
      for (const next of graph[file]) walk(next, [...path, file]);
    };
    for (const file of sources) walk(file, []);
    expect(circles).toEqual([]);
    // What the edges are made of, so the test reads what the files do: probe.ts loads every option lazily.
    expect(graph["probe.ts"].toSorted()).toEqual([
      "all.ts",
      "bench.ts",
      "context.ts",
      "diagnosis.ts",
      "ffi.ts",
      "migrate.ts",
      "qemu.ts",
      "selinux.ts",
      "shared.ts",
      "textfile.ts",
      "types.ts",
    ]);
  });

  test("the budgets: the default run (probe.ts, ffi.ts, shared.ts; types.ts is erased) ≤ 1200 code lines, each other file ≤ 500", () => {
    const statically = (file: string) =>
      [...readFileSync(`${ROOT}/${file}`, "utf8").matchAll(/^import\s+(type\s)?[^;]*?from\s+"\.\/([^"]+\.ts)"/gms)]
        .filter((m) => !m[1])
        .map((m) => m[2]);
    const core = ["probe.ts"];
    for (let i = 0; i < core.length; i++) for (const f of statically(core[i])) if (!core.includes(f)) core.push(f);
    expect(core.toSorted()).toEqual(["ffi.ts", "probe.ts", "shared.ts"]);
    expect(core.reduce((n, f) => n + codeLines(f), 0)).toBeLessThanOrEqual(1200);
    const over = sources.filter((f) => !core.includes(f) && codeLines(f) > 500);
    expect(over).toEqual([]);
    // Counted as formatted at 120 columns: a line the formatter cannot break (a long string, a comment) is no escape.
    const wide = sources.flatMap((f) =>
      readFileSync(`${ROOT}/${f}`, "utf8")
        .split("\n")
        .flatMap((line, i) => (line.length > 120 ? [`${f}:${i + 1}`] : [])),
    );
    expect(wide).toEqual([]);
  });

  test("each file type-checks on its own (with what it imports, and nothing else of the package)", async () => {
    const tsc = `${ROOT}/node_modules/.bin/tsc`;
    const flags = ["--ignoreConfig", "--noEmit", "--strict", "--target", "esnext", "--module", "preserve"];
    const more = [
      "--moduleResolution",
      "bundler",
      "--allowImportingTsExtensions",
      "--skipLibCheck",
      "--types",
      "bun-types",
    ];
    const checked = await Promise.all(
      sources.map(async (file) => {
        const run = Bun.spawn([tsc, ...flags, ...more, file], { cwd: ROOT, stdout: "pipe", stderr: "pipe" });
        const [code, out] = await Promise.all([run.exited, new Response(run.stdout).text()]);
        return [file, code, out.slice(0, 2000)];
      }),
    );
    expect(checked.filter(([, code]) => code !== 0)).toEqual([]);
  }, 30_000);

  test("npm pack holds only the probe, its ABI, each option's file, the JSON schema, the manifest, README and LICENSE", () => {
    const pack = Bun.spawnSync(["npm", "pack", "--dry-run", "--json"], { cwd: ROOT });
    const [{ files }] = JSON.parse(pack.stdout.toString()) as Array<{ files: Array<{ path: string }> }>;
    expect(files.map((f) => f.path).sort()).toEqual([
      "LICENSE",
      "README.md",
      "all.ts",
      "apparmor.ts",
      "bench.ts",
      "context.ts",
      "diagnosis.ts",
      "ffi.ts",
      "migrate.ts",
      "package.json",
      "pid.ts",
      "postcopy-probe-1.schema.json",
      "probe.ts",
      "qemu.ts",
      "seccomp.ts",
      "selinux.ts",
      "shared.ts",
      "textfile.ts",
      "types.ts",
      "vm.ts",
      "walk.ts",
    ]);
    const pkg = JSON.parse(readFileSync(`${ROOT}/package.json`, "utf8"));
    expect([pkg.bin, pkg.dependencies, readFileSync(`${ROOT}/probe.ts`, "utf8").split("\n")[0]]).toEqual([
      { "postcopy-probe": "probe.ts" },
      undefined,
      "#!/bin/sh",
    ]);
  });

  test.skipIf(!isRoot)("the standalone x64 binary gives the same verdict as bun probe.ts", () => {
    // The build script itself, for one target: what `npm run build` ships.
    const build = Bun.spawnSync(["bash", `${ROOT}/.ci/build`, "linux-x64"]);
    expect([build.exitCode, build.stderr.toString()]).toEqual([0, ""]);
    const verdict = (stdout: string) => {
      const r = JSON.parse(stdout) as Report;
      return { postcopy: r.postcopy, checks: r.checks.map((c) => `${c.id}:${c.status}`), capabilities: r.capabilities };
    };
    const binary = Bun.spawnSync([`${ROOT}/dist/postcopy-probe-linux-x64`, "--json"]);
    expect(binary.exitCode).toBe(0);
    expect(verdict(binary.stdout.toString())).toEqual(verdict(cli(["--json"]).stdout));
  });

  const readelf = Bun.which("readelf");
  test.skipIf(!readelf)(
    "the musl binaries need exactly what the README says: musl and libstdc++.so.6 (needs readelf)",
    () => {
      // On a machine that never built one, Bun first downloads the musl runtime and says so on stderr.
      const build = Bun.spawnSync(["bash", `${ROOT}/.ci/build`, "linux-x64-musl"]);
      expect(build.exitCode).toBe(0);
      const dynamic = Bun.spawnSync([readelf!, "-d", `${ROOT}/dist/postcopy-probe-linux-x64-musl`]);
      const needed = [...dynamic.stdout.toString().matchAll(/\(NEEDED\)\s+Shared library: \[(.+)\]/g)].map((m) => m[1]);
      expect(needed).toEqual(["libstdc++.so.6", "libc.musl-x86_64.so.1"]);
      expect(readFileSync(`${ROOT}/README.md`, "utf8")).toContain(
        "`-linux-x64-musl` and `-linux-arm64-musl` are dynamically linked against musl and `libstdc++.so.6`\n(on Alpine: `apk add libstdc++`)",
      );
    },
  );

  // Node 22.18+ runs .ts files; this Node may be older, then there is nothing to run.
  const node = Bun.which("node");
  const nodeRunsTs =
    node !== null && Bun.spawnSync([node, "-e", "process.exit(process.features.typescript ? 0 : 1)"]).exitCode === 0;
  test.skipIf(!nodeRunsTs)("under Node the probe says in one line that it needs Bun", () => {
    const run = Bun.spawnSync([node!, `${ROOT}/probe.ts`]);
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
/** The programs a run executes: the shebang's sh and what it runs (true), then Bun. */
const EXECUTES = ["probe.ts", "true", "bun"];
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
    copyFileSync(`${ROOT}/test/seccomp-run.py`, `${world}/seccomp-run.py`);
    copyFileSync(`${ROOT}/test/docker-default.json`, `${world}/docker-default.json`);
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
      const script =
        'try { require("bun:ffi").dlopen("libnone.so", { mark: { args: [], returns: "void" } }); } catch {}';
      Bun.spawnSync([process.execPath, "-e", script], { cwd: dir });
      expect(existsSync(`${dir}/LOADED`)).toBe(true);
    },
  );

  test.skipIf(skip)("the standalone binary, and --user's child: not read, not run", () => {
    const binary = `${ROOT}/dist/postcopy-probe-linux-x64`;
    expect(Bun.spawnSync(["bash", `${ROOT}/.ci/build`, "linux-x64"]).exitCode).toBe(0);
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
      const pack = Bun.spawnSync(["npm", "pack", "--silent", "--pack-destination", world], { cwd: ROOT });
      const tarball = `${world}/${pack.stdout.toString().trim()}`;
      const dir = hostileDir();
      for (const args of [["--json"], ["--json", "--user", "nobody"]]) {
        const npx = ["npx", "-y", "--prefer-offline", "-p", `${ROOT}/node_modules/bun`, "-p", tarball];
        const run = Bun.spawnSync([...npx, "postcopy-probe", ...args], { cwd: dir });
        expect(JSON.parse(run.stdout.toString()).schema).toBe("postcopy-probe/1");
        expect(run.exitCode).toBeLessThan(2);
      }
      expect([existsSync(`${dir}/RAN`), existsSync(`${dir}/LOADED`)]).toEqual([false, false]);
    },
    60_000,
  );
});
