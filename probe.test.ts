/**
 * Tests for postcopy-probe. The real kernel first (root, another uid through setpriv); a fake Sys
 * only for what this machine cannot produce (ENOSYS, EINVAL from UFFDIO_API, missing ioctl bits).
 */
import { afterAll, describe, expect, test } from "bun:test";
import { chmodSync, copyFileSync, linkSync, mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import {
  errnoOf,
  loadSys,
  MAP_HUGETLB,
  memory,
  type R,
  type Sys,
  UFFD_API,
  UFFD_FEATURE,
  UFFDIO_API,
  UFFDIO_COPY,
  UFFDIO_REGISTER,
  UFFDIO_UNREGISTER,
  UFFDIO_WAKE,
  UFFDIO_WRITEPROTECT,
  UFFDIO_ZEROPAGE,
  USERFAULTFD_IOC_NEW,
} from "./ffi.ts";
import {
  BOUND_MS,
  CAPABILITIES,
  type Check,
  decodeFeatures,
  diagnose,
  type Facts,
  type Options,
  PATTERN_NUL,
  parseArgs,
  probe,
  type Report,
  readFacts,
  renderHuman,
  renderJson,
  renderPrometheus,
  VERSION,
} from "./probe.ts";

const sys = loadSys();
const facts = readFacts(sys);
const opts: Options = {
  format: "human",
  require: ["postcopy-ram"],
  quiet: false,
  targetPageSize: 4096,
  color: false,
  boundMs: BOUND_MS,
  bench: 0,
  user: null,
  qemu: null,
  qemuMs: 5000,
};
const isRoot = process.getuid!() === 0;
const unprivileged = readFileSync("/proc/sys/vm/unprivileged_userfaultfd", "utf8").trim();
const fail = (name: "ENOSYS" | "EINVAL" | "ENOMEM" | "ENOENT"): R => ({ ret: -1, errno: errnoOf(name) });
const statuses = (r: Report) => Object.fromEntries(r.checks.map((c) => [c.id, c.status]));
const check = (r: Report, id: string) => r.checks.find((c) => c.id === id)!;
/**
 * What a leak by the probe would raise: open fds, mappings of the shapes the probe makes (one
 * read-write anonymous page, a memfd, a huge page) and threads named like this one (a pthread
 * inherits the name; Bun's own threads, which come and go, have names of their own).
 */
function count() {
  const isProbeMapping = (line: string) => {
    const [range, perms, , , inode, path = ""] = line.split(/\s+/);
    const [start, end] = range.split("-").map((x) => Number.parseInt(x, 16));
    return (
      (perms === "rw-p" && inode === "0" && !path && end - start === facts.pageSize) ||
      /memfd:postcopy-probe|anon_hugepage/.test(line)
    );
  };
  const name = readFileSync("/proc/self/comm", "utf8");
  return {
    fds: readdirSync("/proc/self/fd").length,
    mappings: readFileSync("/proc/self/maps", "utf8").split("\n").filter(isProbeMapping).length,
    threads: readdirSync("/proc/self/task").filter((t) => readFileSync(`/proc/self/task/${t}/comm`, "utf8") === name)
      .length,
  };
}

/**
 * A copy of bun and the probe that uid 65534 can reach: the checkout may sit in a 0700 directory.
 * Made once, on first use, in a fresh world-readable directory under the system's temp dir.
 */
let reachable: { bun: string; dir: string } | undefined;
function forNobody() {
  if (reachable) return reachable;
  const dir = mkdtempSync(`${tmpdir()}/postcopy-probe-test-`);
  chmodSync(dir, 0o755);
  for (const file of ["probe.ts", "ffi.ts", "qemu.ts", "package.json"])
    copyFileSync(`${import.meta.dir}/${file}`, `${dir}/${file}`);
  try {
    linkSync(process.execPath, `${dir}/bun`);
  } catch {
    copyFileSync(process.execPath, `${dir}/bun`); // another filesystem: a copy keeps the mode
  }
  chmodSync(`${dir}/bun`, 0o755);
  reachable = { bun: `${dir}/bun`, dir };
  return reachable;
}

afterAll(() => reachable && rmSync(reachable.dir, { recursive: true }));

/** Runs the CLI in a child process, optionally as uid 65534. */
function cli(args: string[], asNobody = false) {
  const { bun, dir } = asNobody ? forNobody() : { bun: process.execPath, dir: import.meta.dir };
  const prefix = asNobody ? ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"] : [];
  const run = Bun.spawnSync([...prefix, bun, `${dir}/probe.ts`, ...args], {
    env: { ...process.env, NO_COLOR: "1" },
    cwd: dir,
  });
  return { code: run.exitCode, stdout: run.stdout.toString(), stderr: run.stderr.toString() };
}

describe("ffi.ts", () => {
  test("ioctl codes match include/uapi/linux/userfaultfd.h on x86_64", () => {
    expect(process.arch).toBe("x64");
    expect([
      UFFDIO_API,
      UFFDIO_REGISTER,
      UFFDIO_UNREGISTER,
      UFFDIO_WAKE,
      UFFDIO_COPY,
      UFFDIO_ZEROPAGE,
      UFFDIO_WRITEPROTECT,
      USERFAULTFD_IOC_NEW,
    ]).toEqual([0xc018aa3fn, 0xc020aa00n, 0x8010aa01n, 0x8010aa02n, 0xc028aa03n, 0xc020aa04n, 0xc018aa06n, 0xaa00n]);
  });
  test("UFFD_FEATURE has the 17 kernel bits in order", () => {
    expect(Object.values(UFFD_FEATURE)).toEqual(Array.from({ length: 17 }, (_, i) => 1n << BigInt(i)));
  });
});

describe("probe() on the real kernel", () => {
  test.skipIf(!isRoot)("as root every check passes (hugetlb warns without reserved pages)", () => {
    const report = probe(sys, facts, opts);
    expect(statuses(report)).toEqual({
      "page-size": "pass",
      "uffd-open": "pass",
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
    expect(report.postcopy).toBe(true);
    expect(Object.values(report.capabilities)).toEqual(CAPABILITIES.map(() => true));
    expect(check(report, "uffd-open").routes).toEqual({ device: "ok", syscall: "ok", "user-mode-only": "ok" });
  });

  test.skipIf(!isRoot)("features are decoded from the kernel's own UFFDIO_API answer", () => {
    const fd = sys.userfaultfd(0);
    const api = new BigUint64Array([UFFD_API, 0n, 0n]);
    expect(sys.ioctl(fd.ret, UFFDIO_API, api).ret).toBe(0);
    sys.close(fd.ret);
    const expected = Object.fromEntries(Object.entries(UFFD_FEATURE).map(([n, b]) => [n, (api[1] & b) !== 0n]));
    const report = probe(sys, facts, opts);
    expect(report.features).toEqual({ ...expected, unknown: "0x0" });
    // This machine's kernel (6.8+) offers every bit the probe knows.
    expect(Object.values(expected)).toEqual(Array(17).fill(true));
  });

  test("decodeFeatures() names every bit and shows the rest in hex under unknown", () => {
    const decoded = decodeFeatures(UFFD_FEATURE.THREAD_ID | UFFD_FEATURE.MOVE | (1n << 40n));
    expect(
      Object.entries(decoded)
        .filter(([, v]) => v === true)
        .map(([k]) => k),
    ).toEqual(["THREAD_ID", "MOVE"]);
    expect(decoded.unknown).toBe("0x10000000000");
    expect(decodeFeatures(null)).toEqual({});
  });

  test("a target page size above the host's fails page-size, as QEMU does", () => {
    const report = probe(sys, facts, { ...opts, targetPageSize: facts.pageSize * 16 });
    expect(check(report, "page-size")).toMatchObject({
      status: "fail",
      detail: `host ${facts.pageSize}, target ${facts.pageSize * 16}`,
    });
    expect(report.postcopy).toBe(false);
  });

  test.skipIf(!isRoot || unprivileged !== "0")("as uid 65534 every route is refused and the exit status is 1", () => {
    const run = cli(["--json"], true);
    expect(run.code).toBe(1);
    const report = JSON.parse(run.stdout) as Report;
    expect(report.postcopy).toBe(false);
    expect(report.host.uid).toBe(65534);
    expect(check(report, "uffd-open")).toMatchObject({
      status: "fail",
      errno: "EPERM",
      routes: { device: "EACCES", syscall: "EPERM", "user-mode-only": "ok" },
      detail: "/dev/userfaultfd: EACCES, userfaultfd(2): EPERM, user-mode-only: ok",
    });
    expect(check(report, "register-anon")).toMatchObject({ status: "skip", detail: "no userfaultfd could be opened" });
  });

  test("running the whole probe 200 times leaves no fd, mapping or thread behind", () => {
    for (let i = 0; i < 20; i++) probe(sys, facts, opts);
    Bun.gc(true);
    const before = count();
    for (let i = 0; i < 200; i++) probe(sys, facts, opts);
    Bun.gc(true);
    expect(count()).toEqual(before);
  });
});

describe("probe() with a fake Sys for what this machine cannot produce", () => {
  test("ENOSYS everywhere fails uffd-open and skips the rest", () => {
    const fake: Sys = { ...sys, userfaultfd: () => fail("ENOSYS"), open: () => fail("ENOENT") };
    const report = probe(fake, facts, opts);
    expect(check(report, "uffd-open")).toMatchObject({
      status: "fail",
      errno: "ENOSYS",
      detail: "/dev/userfaultfd: ENOENT, userfaultfd(2): ENOSYS, user-mode-only: ENOSYS",
    });
    expect(report.checks.slice(2, -1).map((c) => c.status)).toEqual(Array(8).fill("skip"));
    expect(report.postcopy).toBe(false);
    expect(report.features).toEqual({});
  });

  test("UFFDIO_API EINVAL fails uffd-api and skips what needs the features", () => {
    const fake: Sys = {
      ...sys,
      ioctl: (fd, req, arg) => (req === UFFDIO_API ? fail("EINVAL") : sys.ioctl(fd, req, arg)),
    };
    const report = probe(fake, facts, opts);
    expect(check(report, "uffd-api")).toMatchObject({ status: "fail", detail: "UFFDIO_API: EINVAL", errno: "EINVAL" });
    expect(check(report, "register-anon")).toMatchObject({ status: "skip", detail: "UFFDIO_API did not answer" });
    expect(report.postcopy).toBe(false);
  });

  test.skipIf(!isRoot)("a register reply without ZEROPAGE fails register-anon naming the bit", () => {
    const zeropage = 1n << 4n;
    const fake: Sys = {
      ...sys,
      ioctl(fd, req, arg) {
        const r = sys.ioctl(fd, req, arg);
        if (req === UFFDIO_REGISTER) (arg as BigUint64Array)[3] &= ~zeropage;
        return r;
      },
    };
    const report = probe(fake, facts, opts);
    expect(check(report, "register-anon")).toMatchObject({
      status: "fail",
      detail: "4096 B page, ioctls 0x12c; Missing userfault map features: UFFDIO_ZEROPAGE",
    });
    expect(report.postcopy).toBe(false);
    expect(report.capabilities["postcopy-ram"]).toBe(false);
  });

  test.skipIf(!isRoot)("hugetlb mmap ENOMEM fails register-hugetlb only", () => {
    const fake: Sys = {
      ...sys,
      mmap: (a, l, p, flags, fd) => (flags & MAP_HUGETLB ? fail("ENOMEM") : sys.mmap(a, l, p, flags, fd)),
    };
    const report = probe(fake, facts, opts);
    expect(check(report, "register-hugetlb")).toMatchObject({
      status: "fail",
      detail: "mmap: ENOMEM",
      errno: "ENOMEM",
    });
    expect(report.capabilities["postcopy-hugetlbfs"]).toBe(false);
    expect(report.postcopy).toBe(true);
    const required = probe(fake, facts, { ...opts, require: ["postcopy-ram", "postcopy-hugetlbfs"] }).required;
    expect(required).toEqual({ capabilities: ["postcopy-ram", "postcopy-hugetlbfs"], ok: false });
  });
});

describe("round trips", () => {
  type Trip = { ok: boolean; ns: number; detail: string };
  const trips = (r: Report) => check(r, "round-trip").trips as Record<string, Trip>;

  test.skipIf(!isRoot)("as root every fault is served and the bytes prove it", () => {
    const report = probe(sys, facts, opts);
    const served = trips(report);
    expect(Object.keys(served)).toEqual(["user-read", "kernel-write", "zeropage", "write-protect"]);
    for (const [key, trip] of Object.entries(served)) {
      expect([key, trip.ok]).toEqual([key, true]);
      expect(trip.ns).toBeGreaterThan(0);
    }
    expect(served["user-read"].detail).toMatch(/^user-mode read \d+ µs$/);
    expect(report.roundTrip).toEqual({ ok: true, ns: served["kernel-write"].ns });
  });

  test.skipIf(!isRoot)("a wrong byte in the copied page fails the trip that reads it", () => {
    // strlen must stop at the pattern's NUL: a COPY whose source has an earlier NUL is caught.
    const fake: Sys = {
      ...sys,
      ioctl(fd, req, arg) {
        if (req === UFFDIO_COPY) memory(Number((arg as BigUint64Array)[1]), facts.pageSize)[100] = 0;
        return sys.ioctl(fd, req, arg);
      },
    };
    const report = probe(fake, facts, opts);
    expect(trips(report)["user-read"]).toMatchObject({
      ok: false,
      detail: `user-mode read: strlen returned 100, not ${PATTERN_NUL}`,
    });
    expect(trips(report)["kernel-write"].ok).toBe(true);
    expect(report.postcopy).toBe(false);
  });

  test.skipIf(!isRoot || unprivileged !== "0")(
    "as uid 65534 only a user-mode-only uffd exists and kernel-mode faults are not delivered",
    () => {
      const report = JSON.parse(cli(["--json"], true).stdout) as Report;
      const rt = check(report, "round-trip");
      expect(rt.status).toBe("fail");
      expect(rt.route).toBe("user-mode-only");
      const served = rt.trips as Record<string, Trip>;
      expect([served["user-read"].ok, served["kernel-write"].ok, served.zeropage.ok]).toEqual([true, false, true]);
      expect(served["kernel-write"].detail).toBe(
        "kernel-mode write: no fault event; uname returned -1 (EFAULT: the fault was not delivered)",
      );
      expect(rt.detail).toEndWith("; QEMU cannot serve KVM's and vhost's kernel-mode faults with it");
      expect(report.roundTrip).toEqual({ ok: false, ns: served["kernel-write"].ns });
    },
  );

  test.skipIf(!isRoot)("a fault never served fails within the bound and leaves nothing behind", () => {
    const deaf: Sys = {
      ...sys,
      poll: () => ({ ret: 0, errno: 0 }),
      read: () => ({ ret: -1, errno: errnoOf("EAGAIN") }),
    };
    probe(sys, facts, opts);
    Bun.gc(true);
    const before = count();
    const report = probe(deaf, facts, { ...opts, boundMs: 50 });
    Bun.gc(true);
    expect(count()).toEqual(before);
    const served = trips(report);
    expect(served["user-read"]).toMatchObject({ ok: false, detail: "user-mode read: no fault event within 50 ms" });
    expect(served["kernel-write"]).toMatchObject({
      ok: false,
      detail: "kernel-mode write: no fault event within 50 ms",
    });
    expect(check(report, "round-trip").status).toBe("fail");
    expect(report.postcopy).toBe(false);
  });

  test.skipIf(!isRoot)("--bench 1000 --json reports the served faults' latency and rate", () => {
    const run = cli(["--bench", "1000", "--json"]);
    expect(run.code).toBe(0);
    const { bench } = JSON.parse(run.stdout) as { bench: Record<string, number> };
    const huge = facts.freeHugepages && facts.freeHugepages >= 2;
    const base = (huge ? (bench as unknown as Array<Record<string, number>>)[0] : bench) as Record<string, number>;
    expect(Object.keys(base)).toEqual(["faults", "pageSize", "p50Ns", "p99Ns", "pagesPerSec", "bytesPerSec"]);
    expect([base.faults, base.pageSize]).toEqual([1000, facts.pageSize]);
    expect(base.p50Ns).toBeGreaterThan(0);
    expect(base.p99Ns).toBeGreaterThanOrEqual(base.p50Ns);
    expect(base.bytesPerSec).toBe(base.pagesPerSec * facts.pageSize);
  });
});

/** Runs the probe under a seccomp filter that makes userfaultfd(2) fail with `errno`, like a container runtime. */
function underSeccomp(errno: "EPERM" | "ENOSYS", asNobody: boolean, args: string[] = []) {
  const { bun, dir } = forNobody();
  const script = `${dir}/seccomp-child.ts`;
  require("node:fs").writeFileSync(
    script,
    `
    import { errnoOf, loadSys, PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP, SECCOMP_MODE_FILTER } from "./ffi.ts";
    import { main } from "./probe.ts";
    const sys = loadSys();
    // struct sock_filter {u16 code; u8 jt, jf; u32 k}: on x86_64, userfaultfd(2) -> ERRNO, all else ALLOW.
    const insns = [[0x20, 0, 0, 4], [0x15, 0, 3, 0xc000003e], [0x20, 0, 0, 0], [0x15, 0, 1, 323],
      [0x06, 0, 0, 0x00050000 | errnoOf("${errno}")], [0x06, 0, 0, 0x7fff0000]];
    const filter = new DataView(new ArrayBuffer(8 * insns.length));
    insns.forEach(([code, jt, jf, k], i) => { filter.setUint16(8 * i, code, true); filter.setUint8(8 * i + 2, jt); filter.setUint8(8 * i + 3, jf); filter.setUint32(8 * i + 4, k, true); });
    const { ptr } = await import("bun:ffi");
    const prog = new BigUint64Array([BigInt(insns.length), BigInt(ptr(new Uint8Array(filter.buffer)))]);
    if (sys.prctl(PR_SET_NO_NEW_PRIVS, 1).ret || sys.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, prog).ret) throw new Error("seccomp");
    main(${JSON.stringify(["--json", ...args])});
  `,
  );
  const prefix = asNobody ? ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"] : [];
  const run = Bun.spawnSync([...prefix, bun, script], { cwd: dir });
  return { code: run.exitCode, report: JSON.parse(run.stdout.toString()) as Report };
}

describe("diagnosis under real denials", () => {
  const SYSCTL = [
    "sysctl -w vm.unprivileged_userfaultfd=1",
    "echo vm.unprivileged_userfaultfd=1 > /etc/sysctl.d/99-userfaultfd.conf",
  ];
  const SECCOMP_FIX = [
    "docker run --device /dev/userfaultfd ...   # or podman run --device: QEMU 8.0+ opens it first",
    "docker run --security-opt seccomp=PROFILE.json ...   # PROFILE.json allowing userfaultfd",
    "podman run --security-opt seccomp=PROFILE.json ...",
    "kubectl: securityContext.seccompProfile: {type: Localhost, localhostProfile: PROFILE.json}",
  ];
  const causes = (r: Report) => r.diagnosis.map((d) => d.cause);

  test.skipIf(!isRoot || unprivileged !== "0")(
    "as uid 65534: unprivileged-userfaultfd, fixed by the device or the sysctl",
    () => {
      const run = cli(["--json"], true);
      expect(run.code).toBe(1);
      const report = JSON.parse(run.stdout) as Report;
      expect(report.diagnosis).toEqual([
        {
          cause: "unprivileged-userfaultfd",
          summary: "vm.unprivileged_userfaultfd is 0 and this user lacks CAP_SYS_PTRACE",
          evidence: [
            "userfaultfd(2): EPERM, with UFFD_USER_MODE_ONLY: ok",
            "vm.unprivileged_userfaultfd = 0",
            "CAP_SYS_PTRACE: not held by nobody (uid 65534)",
          ],
          fix: [
            "setfacl -m u:nobody:rw /dev/userfaultfd   # QEMU 8.0+ opens /dev/userfaultfd first",
            ...SYSCTL,
            'setcap cap_sys_ptrace+ep "$(command -v qemu-system-x86_64)"   # broad: also lets QEMU ptrace',
          ],
        },
        {
          cause: "devnode-permission",
          summary: "/dev/userfaultfd does not let this user in, and the syscall is refused",
          evidence: [
            `/dev/userfaultfd: ${facts.devnode!.mode} ${facts.devnode!.owner} ${facts.devnode!.group}`,
            "open as nobody (uid 65534): EACCES",
          ],
          fix: [
            "setfacl -m u:nobody:rw /dev/userfaultfd   # QEMU 8.0+ opens /dev/userfaultfd first",
            `echo 'KERNEL=="userfaultfd", GROUP="kvm", MODE="0660"' > /etc/udev/rules.d/99-userfaultfd.rules && udevadm control --reload && udevadm trigger --subsystem-match=misc`,
            "usermod -aG kvm nobody",
          ],
        },
      ]);
    },
  );

  test.skipIf(!isRoot || unprivileged !== "0")("--user nobody answers exactly as a process started as nobody", () => {
    const strip = (r: Report) =>
      JSON.stringify({
        ...r,
        roundTrip: undefined,
        checks: r.checks.map(({ detail, trips, ...c }) => ({ ...c, detail: detail.replace(/\d+ µs/g, "") })),
      });
    const viaUser = cli(["--json", "--user", "nobody"]);
    const viaSetpriv = cli(["--json"], true);
    expect(viaUser.code).toBe(viaSetpriv.code);
    expect(strip(JSON.parse(viaUser.stdout))).toBe(
      strip(JSON.parse(viaSetpriv.stdout)).replace(
        "probing as nobody (uid 65534)",
        "probing as nobody (uid 65534), as --user asked",
      ),
    );
  });

  test.skipIf(!isRoot)("--user refuses an unknown user and a caller that is not root", () => {
    expect(cli(["--user", "no-such-user"]).stderr.split("\n")[0]).toBe(
      'postcopy-probe: Unknown user "no-such-user": not in /etc/passwd',
    );
    expect(cli(["--user", "no-such-user"]).code).toBe(2);
    const run = cli(["--user", "root"], true);
    expect([run.code, run.stderr.split("\n")[0]]).toEqual([2, "postcopy-probe: --user needs root: this is uid 65534"]);
  });

  test.skipIf(!isRoot)(
    "a seccomp filter returning EPERM is seccomp even as root; /dev/userfaultfd still serves QEMU 8.0+",
    () => {
      const { code, report } = underSeccomp("EPERM", false);
      expect(check(report, "uffd-open")).toMatchObject({
        status: "warn",
        routes: { device: "ok", syscall: "EPERM", "user-mode-only": "EPERM" },
      });
      expect(check(report, "uffd-open").detail).toEndWith("; QEMU older than 8.0 only uses the syscall and will fail");
      expect([code, report.postcopy]).toEqual([0, true]);
      expect(report.diagnosis.find((d) => d.cause === "seccomp")).toEqual({
        cause: "seccomp",
        summary: "a seccomp filter denies userfaultfd(2)",
        evidence: [
          `Seccomp: 2 in /proc/self/status (${(report.host as Facts).seccompFilters} filters)`,
          "userfaultfd(2): EPERM, with UFFD_USER_MODE_ONLY: EPERM",
        ],
        fix: SECCOMP_FIX,
      });
      expect(causes(report)).not.toContain("unprivileged-userfaultfd");
    },
  );

  test.skipIf(!isRoot)("a seccomp filter returning ENOSYS is seccomp, not no-kernel-support", () => {
    const { code, report } = underSeccomp("ENOSYS", true);
    expect([code, report.postcopy]).toEqual([1, false]);
    expect(causes(report)).toEqual(["seccomp", "devnode-permission"]);
    expect(report.diagnosis[0].evidence[1]).toBe("userfaultfd(2): ENOSYS, with UFFD_USER_MODE_ONLY: ENOSYS");
  });
});

describe("diagnose() for what this machine cannot produce", () => {
  const base: Facts = {
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
    devnode: { mode: "crw-------", owner: "root", group: "root" },
    miscMinor: 126,
    selinux: null,
    gvisor: false,
    qemuUser: "qemu",
    nrHugepages: 0,
  };
  const opened = (device: string, syscall: string, umo: string): Check[] => [
    { id: "uffd-open", title: "", status: "fail", detail: "", routes: { device, syscall, "user-mode-only": umo } },
  ];

  /**
   * The diagnosis as a decision table: for each cause, the least that must produce it, and a near
   * miss (one fact or answer changed) that must not. Routes are [device, syscall, user-mode-only].
   */
  type Case = { facts?: Partial<Facts>; routes: [string, string, string]; checks?: Check[] };
  const hugetlbWarns: Check = { id: "register-hugetlb", title: "", status: "warn", detail: "vm.nr_hugepages is 0" };
  const threadIdMissing: Check = {
    id: "uffd-features",
    title: "",
    status: "warn",
    detail: "UFFD_FEATURE_THREAD_ID not offered",
    missing: ["UFFD_FEATURE_THREAD_ID"],
  };
  const TABLE: Array<{ cause: string; hit: Case; causes: string[]; miss: Case }> = [
    {
      cause: "gvisor",
      hit: { facts: { gvisor: true, devnode: null }, routes: ["ENOENT", "ENOSYS", "ENOSYS"] },
      causes: ["gvisor", "devnode-missing"],
      miss: { facts: { gvisor: false, devnode: null }, routes: ["ENOENT", "ENOSYS", "ENOSYS"] },
    },
    {
      cause: "seccomp",
      hit: { facts: { seccomp: 2 }, routes: ["EACCES", "EPERM", "EPERM"] },
      causes: ["seccomp", "devnode-permission"],
      miss: { facts: { seccomp: 2 }, routes: ["EACCES", "EPERM", "ok"] },
    },
    {
      cause: "no-kernel-support",
      hit: { routes: ["EACCES", "ENOSYS", "ENOSYS"] },
      causes: ["no-kernel-support", "devnode-permission"],
      miss: { facts: { seccomp: 2 }, routes: ["EACCES", "ENOSYS", "ENOSYS"] },
    },
    {
      cause: "user-namespace",
      hit: { facts: { capSysPtrace: true, userNamespace: true }, routes: ["EACCES", "EPERM", "ok"] },
      causes: ["user-namespace", "devnode-permission"],
      miss: { facts: { capSysPtrace: true, userNamespace: false }, routes: ["EACCES", "EPERM", "ok"] },
    },
    {
      cause: "unprivileged-userfaultfd",
      hit: { routes: ["ok", "EPERM", "ok"] },
      causes: ["unprivileged-userfaultfd"],
      miss: { routes: ["ok", "ok", "ok"] },
    },
    {
      cause: "selinux",
      hit: { facts: { selinux: "enforcing" }, routes: ["ok", "EACCES", "EACCES"] },
      causes: ["selinux"],
      miss: { facts: { selinux: "permissive" }, routes: ["ok", "EACCES", "EACCES"] },
    },
    {
      cause: "devnode-missing",
      hit: { facts: { devnode: null }, routes: ["ENOENT", "EPERM", "ok"] },
      causes: ["unprivileged-userfaultfd", "devnode-missing"],
      miss: { facts: { devnode: null }, routes: ["ENOENT", "ok", "ok"] },
    },
    {
      cause: "devnode-permission",
      hit: { routes: ["EACCES", "EPERM", "ok"] },
      causes: ["unprivileged-userfaultfd", "devnode-permission"],
      miss: { routes: ["EACCES", "ok", "ok"] },
    },
    {
      cause: "missing-feature",
      hit: { routes: ["ok", "ok", "ok"], checks: [threadIdMissing] },
      causes: ["missing-feature"],
      miss: { routes: ["ok", "ok", "ok"], checks: [{ ...threadIdMissing, status: "pass", missing: [] }] },
    },
    {
      cause: "hugepages-not-reserved",
      hit: { routes: ["ok", "ok", "ok"], checks: [hugetlbWarns] },
      causes: ["hugepages-not-reserved"],
      miss: { routes: ["ok", "ok", "ok"], checks: [{ ...hugetlbWarns, status: "pass" }] },
    },
  ];
  const decide = ({ facts: f = {}, routes, checks = [] }: Case) =>
    diagnose({ ...base, ...f }, [...opened(...routes), ...checks]).map((d) => d.cause);

  test.each(TABLE.map((row) => [row.cause, row] as const))("diagnose() names %s from its gate alone", (_, row) => {
    expect(decide(row.hit)).toEqual(row.causes);
  });
  test.each(TABLE.map((row) => [row.cause, row] as const))("diagnose() does not name %s on a near miss", (_, row) => {
    expect(decide(row.miss)).not.toContain(row.cause);
  });

  test("ENOSYS without a filter is no-kernel-support", () => {
    expect(
      diagnose(
        { ...base, devnode: null, miscMinor: null, unprivilegedUserfaultfd: null },
        opened("ENOENT", "ENOSYS", "ENOSYS"),
      ),
    ).toEqual([
      {
        cause: "no-kernel-support",
        summary: "this kernel has no userfaultfd (CONFIG_USERFAULTFD off, or before 4.3)",
        evidence: [
          "userfaultfd(2): ENOSYS without a seccomp filter",
          "kernel 6.1.0",
          "vm.unprivileged_userfaultfd: absent",
        ],
        fix: [
          "grep USERFAULTFD /boot/config-$(uname -r)   # want CONFIG_USERFAULTFD=y",
          "boot a kernel built with CONFIG_USERFAULTFD=y",
        ],
      },
      {
        cause: "devnode-missing",
        summary: "/dev/userfaultfd is not there, and the syscall is refused",
        evidence: ["/dev/userfaultfd: ENOENT", "no userfaultfd in /proc/misc: the device came in Linux 6.1"],
        fix: [
          "sysctl -w vm.unprivileged_userfaultfd=1   # before 6.1 the syscall is the only way",
          "echo vm.unprivileged_userfaultfd=1 > /etc/sysctl.d/99-userfaultfd.conf",
        ],
      },
    ]);
  });

  test("gVisor is gvisor, not seccomp or no-kernel-support", () => {
    const d = diagnose({ ...base, gvisor: true, kernel: "4.4.0", devnode: null }, opened("ENOENT", "ENOSYS", "ENOSYS"));
    expect(d.map((x) => x.cause)).toEqual(["gvisor", "devnode-missing"]);
    expect(d[0]).toEqual({
      cause: "gvisor",
      summary: "gVisor's kernel does not implement userfaultfd",
      evidence: ["/proc/version: gVisor (release 4.4.0)", "userfaultfd(2): ENOSYS, with UFFD_USER_MODE_ONLY: ENOSYS"],
      fix: [
        "docker run --runtime=runc ...   # not --runtime=runsc",
        "kubectl edit pod ...   # drop runtimeClassName: gvisor",
      ],
    });
    expect(d[1].fix).toEqual([
      "mknod -m 0660 /dev/userfaultfd c 10 126 && chgrp kvm /dev/userfaultfd",
      "docker run --device /dev/userfaultfd ...   # or podman run --device: QEMU 8.0+ opens it first",
    ]);
  });

  test("CAP_SYS_PTRACE inside a user namespace is user-namespace", () => {
    const d = diagnose(
      { ...base, uid: 0, user: "root", capSysPtrace: true, userNamespace: true, uidMap: "0 100000 65536" },
      opened("ENOENT", "EPERM", "ok"),
    );
    expect(d[0]).toEqual({
      cause: "user-namespace",
      summary: "CAP_SYS_PTRACE is held only inside a user namespace, where userfaultfd ignores it",
      evidence: ["/proc/self/uid_map: 0 100000 65536", "userfaultfd(2): EPERM, with UFFD_USER_MODE_ONLY: ok"],
      fix: [
        "docker run --device /dev/userfaultfd ...   # or podman run --device: QEMU 8.0+ opens it first",
        "sysctl -w vm.unprivileged_userfaultfd=1   # on the host",
        "echo vm.unprivileged_userfaultfd=1 > /etc/sysctl.d/99-userfaultfd.conf",
      ],
    });
    expect(d.map((x) => x.cause)).toEqual(["user-namespace", "devnode-missing"]);
  });

  test("with /dev/userfaultfd already open to the user, the syscall's fixes do not repeat the ACL", () => {
    expect(diagnose(base, opened("ok", "EPERM", "ok"))).toEqual([
      {
        cause: "unprivileged-userfaultfd",
        summary: "vm.unprivileged_userfaultfd is 0 and this user lacks CAP_SYS_PTRACE",
        evidence: [
          "userfaultfd(2): EPERM, with UFFD_USER_MODE_ONLY: ok",
          "vm.unprivileged_userfaultfd = 0",
          "CAP_SYS_PTRACE: not held by qemu (uid 107)",
        ],
        fix: [
          "sysctl -w vm.unprivileged_userfaultfd=1",
          "echo vm.unprivileged_userfaultfd=1 > /etc/sysctl.d/99-userfaultfd.conf",
          'setcap cap_sys_ptrace+ep "$(command -v qemu-system-x86_64)"   # broad: also lets QEMU ptrace',
        ],
      },
    ]);
  });

  test("SELinux denying the syscall with EACCES is selinux", () => {
    const d = diagnose({ ...base, selinux: "enforcing" }, opened("EACCES", "EACCES", "EACCES"));
    expect(d[0]).toEqual({
      cause: "selinux",
      summary: "SELinux is enforcing and denied userfaultfd",
      evidence: [
        "/sys/fs/selinux/enforce: 1",
        "/dev/userfaultfd: EACCES",
        "userfaultfd(2): EACCES, with UFFD_USER_MODE_ONLY: EACCES",
      ],
      fix: [
        "ausearch -m avc -ts recent | grep userfaultfd",
        "ausearch -m avc -ts recent | audit2allow -M userfaultfd-local && semodule -i userfaultfd-local.pp",
      ],
    });
  });

  test("a missing feature names it and the kernel that added it", () => {
    const checks: Check[] = [
      ...opened("ok", "ok", "ok"),
      {
        id: "write-protect",
        title: "",
        status: "fail",
        detail: "kernel does not offer UFFD_FEATURE_PAGEFAULT_FLAG_WP",
        missing: ["UFFD_FEATURE_PAGEFAULT_FLAG_WP"],
      },
      {
        id: "uffd-features",
        title: "",
        status: "warn",
        detail: "UFFD_FEATURE_THREAD_ID not offered: no postcopy-blocktime",
        missing: ["UFFD_FEATURE_THREAD_ID"],
      },
    ];
    expect(diagnose({ ...base, kernel: "4.12.0" }, checks)).toEqual([
      {
        cause: "missing-feature",
        summary: "the kernel lacks a feature or ioctl a capability needs",
        evidence: [
          "write-protect: kernel does not offer UFFD_FEATURE_PAGEFAULT_FLAG_WP",
          "uffd-features: UFFD_FEATURE_THREAD_ID not offered: no postcopy-blocktime",
        ],
        fix: [
          "boot Linux 5.7 or later for UFFD_FEATURE_PAGEFAULT_FLAG_WP (this is 4.12.0)",
          "boot Linux 4.14 or later for UFFD_FEATURE_THREAD_ID (this is 4.12.0)",
        ],
      },
    ]);
  });

  test.skipIf(!isRoot)("root without --user warns when QEMU has its own user here", () => {
    const report = probe(sys, { ...facts, uid: 0, qemuUser: "libvirt-qemu" }, opts);
    expect(check(report, "run-as")).toMatchObject({
      status: "warn",
      hint: "postcopy-probe --user libvirt-qemu",
      detail: "root's answer may not be QEMU's: QEMU runs as libvirt-qemu here; run postcopy-probe --user libvirt-qemu",
    });
  });
});

describe("--qemu: the installed QEMU's own answer", () => {
  const qemu = Bun.which("qemu-system-x86_64");
  const fake = (name: string, body: string) => {
    const path = `${forNobody().dir}/${name}`;
    require("node:fs").writeFileSync(path, `#!/bin/sh\n${body}\n`, { mode: 0o755 });
    return path;
  };
  const GREETING = `echo '{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}, "package": ""}, "capabilities": []}}'`;

  test.skipIf(!qemu || !isRoot)("as root QEMU accepts postcopy-ram and the probe agrees", () => {
    const run = cli(["--json", "--qemu"]);
    const report = JSON.parse(run.stdout) as Report;
    expect(run.code).toBe(0);
    expect(report.qemu).toMatchObject({ path: qemu, accepts: true, message: "", agrees: true });
    expect(check(report, "qemu")).toMatchObject({
      status: "pass",
      detail: `QEMU ${report.qemu!.version} accepts postcopy-ram, as the probe says`,
    });
  });

  test.skipIf(!qemu || !isRoot || unprivileged !== "0")(
    "as uid 65534 QEMU rejects postcopy-ram and the probe agrees",
    () => {
      const run = cli(["--json", "--qemu"], true);
      const report = JSON.parse(run.stdout) as Report;
      expect(run.code).toBe(1);
      expect(report.qemu).toMatchObject({ accepts: false, agrees: true });
      expect(report.qemu!.message).toStartWith("Postcopy is not supported");
      expect(check(report, "qemu").status).toBe("fail");
    },
  );

  test.skipIf(!qemu || !isRoot)(
    "a syscall-only QEMU under a seccomp filter fails where the device serves 8.0+: said, explained, and the exit status is QEMU's",
    () => {
      const { code, report } = underSeccomp("EPERM", false, ["--qemu"]);
      expect(report.postcopy).toBe(true);
      const major = Number(report.qemu!.version.split(".")[0]);
      if (major >= 8) return expect([code, report.qemu!.agrees]).toEqual([0, true]); // this QEMU opens /dev/userfaultfd first
      expect(code).toBe(1);
      expect(report.qemu).toMatchObject({
        accepts: false,
        agrees: false,
        why: `QEMU ${report.qemu!.version} predates 8.0 and opens only userfaultfd(2), refused here (EPERM): this QEMU will fail; QEMU 8.0+ or one of the fixes would work`,
      });
      expect(report.required).toEqual({ capabilities: ["postcopy-ram"], ok: false });
    },
  );

  test.skipIf(!isRoot)(
    "a QEMU that rejects what the probe accepts is reported loudly and decides the exit status",
    () => {
      const path = fake(
        "qemu-rejects",
        [
          GREETING,
          "read l; echo '{\"return\": {}}'",
          `read l; echo '{"error": {"class": "GenericError", "desc": "Postcopy is not supported"}}'`,
          "echo 'postcopy_ram_supported_by_host: userfaultfd not available: Operation not permitted' >&2",
          "read l; echo '{\"return\": {}}'",
        ].join("\n"),
      );
      const report = probe(sys, facts, { ...opts, qemu: path });
      expect(report.qemu).toEqual({
        path,
        version: "7.2.0",
        accepts: false,
        agrees: false,
        message:
          "Postcopy is not supported: postcopy_ram_supported_by_host: userfaultfd not available: Operation not permitted",
        why: "the reason is not known to the probe: QEMU's answer decides",
      });
      expect(check(report, "qemu")).toMatchObject({
        status: "fail",
        detail:
          "QEMU 7.2.0 rejects postcopy-ram: Postcopy is not supported: postcopy_ram_supported_by_host: userfaultfd not available: Operation not permitted; THE PROBE SAID YES: the reason is not known to the probe: QEMU's answer decides",
      });
      expect([report.postcopy, report.required.ok]).toEqual([true, false]);
      expect(renderHuman(report, { quiet: true, color: false })).toContain(
        `QEMU 7.2.0 (${path}) DISAGREES and decides the exit status: the reason is not known to the probe: QEMU's answer decides`,
      );
    },
  );

  test("a QEMU that does not answer is killed within the bound and reported", () => {
    const path = fake("qemu-silent", `${GREETING}\nexec sleep 30`);
    const report = probe(sys, facts, { ...opts, qemu: path, qemuMs: 300 });
    expect(check(report, "qemu")).toMatchObject({ status: "fail", detail: `${path}: no answer within 300 ms: killed` });
    expect(report.qemu).toBeUndefined();
  });

  const distroQemu = ["/usr/libexec/qemu-kvm", "/usr/bin/qemu-kvm"].some((p) => sys.stat(p).ret === 0);
  test.skipIf(distroQemu)(
    "no QEMU found skips the check, naming the places looked at, and leaves the exit status alone",
    () => {
      const path = process.env.PATH;
      process.env.PATH = "/nonexistent";
      const report = probe(sys, facts, { ...opts, qemu: true });
      process.env.PATH = path;
      expect(report.required.ok).toBe(report.postcopy);
      expect(check(report, "qemu")).toMatchObject({
        status: "skip",
        detail: "no QEMU found: looked for qemu-system-x86_64 on $PATH, /usr/libexec/qemu-kvm, /usr/bin/qemu-kvm",
      });
    },
  );

  test("without --qemu there is no qemu check and nothing is spawned", () => {
    expect(probe(sys, facts, opts).checks.map((c) => c.id)).not.toContain("qemu");
  });
});

describe("the package and the binary", () => {
  test("npm pack holds only the probe, its ABI, the manifest, README and LICENSE", () => {
    const pack = Bun.spawnSync(["npm", "pack", "--dry-run", "--json"], { cwd: import.meta.dir });
    const [{ files }] = JSON.parse(pack.stdout.toString()) as Array<{ files: Array<{ path: string }> }>;
    expect(files.map((f) => f.path).sort()).toEqual([
      "LICENSE",
      "README.md",
      "ffi.ts",
      "package.json",
      "probe.ts",
      "qemu.ts",
    ]);
    const pkg = JSON.parse(readFileSync(`${import.meta.dir}/package.json`, "utf8"));
    expect([pkg.bin, pkg.dependencies, readFileSync(`${import.meta.dir}/probe.ts`, "utf8").split("\n")[0]]).toEqual([
      { "postcopy-probe": "probe.ts" },
      undefined,
      "#!/usr/bin/env bun",
    ]);
  });

  test.skipIf(!isRoot)("the standalone x64 binary gives the same verdict as bun probe.ts", () => {
    // The build script itself, for one target: what `npm run build` ships.
    const build = Bun.spawnSync(["bash", `${import.meta.dir}/.ci/build`, "linux-x64"]);
    expect([build.exitCode, build.stderr.toString()]).toEqual([0, ""]);
    const out = `${import.meta.dir}/dist/postcopy-probe-linux-x64`;
    const verdict = (stdout: string) => {
      const r = JSON.parse(stdout) as Report;
      return {
        postcopy: r.postcopy,
        checks: r.checks.map((c) => `${c.id}:${c.status}`),
        capabilities: r.capabilities,
        diagnosis: r.diagnosis,
      };
    };
    const binary = Bun.spawnSync([out, "--json"]);
    expect(binary.exitCode).toBe(0);
    expect(verdict(binary.stdout.toString())).toEqual(verdict(cli(["--json"]).stdout));
  });

  // Node 22.18+ runs .ts files; this Node may be older, then there is nothing to run.
  const node = Bun.which("node");
  const nodeRunsTs =
    node !== null && Bun.spawnSync([node, "-e", "process.exit(process.features.typescript ? 0 : 1)"]).exitCode === 0;
  test.skipIf(!nodeRunsTs)("under Node the probe says in one line that it needs Bun", () => {
    const run = Bun.spawnSync([node!, `${import.meta.dir}/probe.ts`]);
    expect([run.exitCode, run.stdout.toString(), run.stderr.toString()]).toEqual([
      2,
      "",
      "postcopy-probe needs Bun: run `npx -y -p bun -p postcopy-probe postcopy-probe`, or `bunx postcopy-probe`\n",
    ]);
  });
});

describe("renderers", () => {
  const report: Report = {
    schema: "postcopy-probe/1",
    version: "0.1.0",
    postcopy: false,
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
    capabilities: Object.fromEntries(CAPABILITIES.map((c) => [c, c === "criu-lazy-pages"])) as Report["capabilities"],
    required: { capabilities: ["postcopy-ram"], ok: false },
    diagnosis: [],
  };
  const pad = (s: string) => s.padEnd(72);

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
    const out = renderHuman(report, { quiet: true, color: true });
    expect(out).toBe(
      [
        `${pad("Checking for a userfaultfd")}: \x1b[31mFAIL\x1b[0m (userfaultfd(2): EPERM)`,
        "Postcopy live migration (QEMU postcopy-ram): \x1b[31mNOT SUPPORTED\x1b[0m for qemu (uid 107)",
        "",
      ].join("\n"),
    );
  });

  test("renderHuman() with quiet prints only warnings, failures, why and the verdict", () => {
    const why = {
      ...report,
      diagnosis: [{ cause: "seccomp", summary: "a filter", evidence: ["Seccomp: 2"], fix: ["docker run ..."] }],
    };
    expect(renderHuman(why, { quiet: true, color: false }).split("\n")).toEqual([
      `${pad("Checking for a userfaultfd")}: FAIL (userfaultfd(2): EPERM)`,
      "",
      "Why / Fix:",
      "  seccomp: a filter",
      "    because Seccomp: 2",
      "    $ docker run ...",
      "Postcopy live migration (QEMU postcopy-ram): NOT SUPPORTED for qemu (uid 107)",
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

  test("renderPrometheus() writes gauges with HELP and TYPE for the textfile collector", () => {
    const withTrip = {
      ...report,
      features: { THREAD_ID: true, MOVE: false, unknown: "0x0" },
      roundTrip: { ok: false, ns: 1500 },
    };
    const help = (name: string, text: string) => [
      `# HELP postcopy_probe_${name} ${text}`,
      `# TYPE postcopy_probe_${name} gauge`,
    ];
    const statuses = (id: string, on: string) =>
      ["pass", "warn", "fail", "skip"].map((s) => `postcopy_probe_check{id="${id}",status="${s}"} ${s === on ? 1 : 0}`);
    expect(renderPrometheus(withTrip).split("\n")).toEqual([
      ...help("supported", "1 when QEMU can use postcopy-ram here, in the probed context."),
      "postcopy_probe_supported 0",
      ...help("capability", "1 when a userfaultfd consumer can work here."),
      ...CAPABILITIES.map((c) => `postcopy_probe_capability{capability="${c}"} ${c === "criu-lazy-pages" ? 1 : 0}`),
      ...help("check", "1 on the status each check has, 0 on the others."),
      ...statuses("page-size", "pass"),
      ...statuses("uffd-open", "fail"),
      ...statuses("uffd-api", "skip"),
      ...help("feature", "1 when the kernel offers the UFFD_FEATURE_* bit."),
      'postcopy_probe_feature{name="THREAD_ID"} 1',
      'postcopy_probe_feature{name="MOVE"} 0',
      ...help("round_trip_seconds", "The kernel-mode write fault round trip, thread start to join."),
      "postcopy_probe_round_trip_seconds 0.0000015",
      ...help("info", "The probe's version and the context it answered for."),
      'postcopy_probe_info{version="0.1.0",kernel="6.1.0",user="qemu",uid="107"} 1',
      "",
    ]);
  });

  const promtool = Bun.which("promtool");
  test.skipIf(!promtool || !isRoot)("promtool check metrics accepts a real run's output", () => {
    const run = cli(["--format", "prometheus"]);
    expect(run.code).toBe(0);
    const check = Bun.spawnSync([promtool!, "check", "metrics"], { stdin: new TextEncoder().encode(run.stdout) });
    expect([check.exitCode, check.stdout.toString() + check.stderr.toString()]).toEqual([0, ""]);
  });

  test("renderJson() is the report and nothing else", () => {
    expect(JSON.parse(renderJson(report))).toEqual(report);
  });
});

describe("the command line", () => {
  test("parseArgs() reads every option and NO_COLOR turns colour off on a TTY", () => {
    expect(parseArgs(["--json", "-q", "--target-page-size=16384", "--bench"], {}, true)).toEqual({
      format: "json",
      require: ["postcopy-ram"],
      quiet: true,
      targetPageSize: 16384,
      color: true,
      boundMs: BOUND_MS,
      bench: 10000,
      user: null,
      qemu: null,
      qemuMs: 5000,
      help: false,
      version: false,
    });
    expect(parseArgs(["--bench", "500", "--json"]).bench).toBe(500);
    expect(parseArgs(["--bench=2"]).bench).toBe(2);
    expect([
      parseArgs(["--qemu"]).qemu,
      parseArgs(["--qemu", "--json"]).qemu,
      parseArgs(["--qemu", "/opt/q", "-q"]).qemu,
    ]).toEqual([true, true, "/opt/q"]);
    expect(parseArgs(["--require", "postcopy-shmem,criu-lazy-pages", "--format=prometheus"])).toMatchObject({
      require: ["postcopy-shmem", "criu-lazy-pages"],
      format: "prometheus",
    });
    expect(parseArgs(["--format", "human"], { NO_COLOR: "1" }, true).color).toBe(false);
  });

  test.each([
    [["--bogus"], 'postcopy-probe: Unknown option "--bogus"'],
    [
      ["--target-page-size", "abc"],
      'postcopy-probe: Invalid target page size "abc": a power of two in bytes, such as 4096',
    ],
    [
      ["--target-page-size", "3000"],
      'postcopy-probe: Invalid target page size "3000": a power of two in bytes, such as 4096',
    ],
    [["--format", "xml"], 'postcopy-probe: Unknown format "xml": use human, json, prometheus'],
    [
      ["--require", "postcopy-ram,teleport"],
      'postcopy-probe: Unknown capability "teleport": use postcopy-ram, postcopy-hugetlbfs, postcopy-shmem, background-snapshot, postcopy-blocktime, criu-lazy-pages, firecracker-uffd',
    ],
    [["--format"], 'postcopy-probe: Option "--format" needs a value'],
    [["--bench=1"], 'postcopy-probe: Invalid fault count "1": a whole number from 2 to 500000'],
    [["--bench=ten"], 'postcopy-probe: Invalid fault count "ten": a whole number from 2 to 500000'],
    [["--bench", "ten"], 'postcopy-probe: Invalid fault count "ten": a whole number from 2 to 500000'],
    [["--user"], 'postcopy-probe: Option "--user" needs a value'],
  ])("%p exits 2 with a message and the usage line", (args, message) => {
    const run = cli(args);
    expect(run.code).toBe(2);
    expect(run.stdout).toBe("");
    expect(run.stderr.split("\n")[0]).toBe(message);
    expect(run.stderr.split("\n")[1]).toStartWith("Usage: postcopy-probe ");
  });

  test("--version prints the package version and --help the usage", () => {
    const pkg = JSON.parse(readFileSync(`${import.meta.dir}/package.json`, "utf8"));
    expect(VERSION).toBe(pkg.version);
    expect(cli(["--version"])).toEqual({ code: 0, stdout: `${pkg.version}\n`, stderr: "" });
    const help = cli(["--help"]);
    expect(help.code).toBe(0);
    expect(help.stdout).toStartWith("Usage: postcopy-probe ");
  });

  test.skipIf(!isRoot)("--require makes the exit status stand for the named capabilities", () => {
    const run = cli(["--json", "--require", "postcopy-ram,criu-lazy-pages"]);
    expect([run.code, JSON.parse(run.stdout).required]).toEqual([
      0,
      { capabilities: ["postcopy-ram", "criu-lazy-pages"], ok: true },
    ]);
  });

  test.skipIf(!isRoot)("--json prints only the JSON document and exits 0 as root", () => {
    const run = cli(["--json"]);
    expect(run.code).toBe(0);
    const report = JSON.parse(run.stdout) as Report;
    expect([report.schema, report.version, report.postcopy]).toEqual(["postcopy-probe/1", VERSION, true]);
  });
});
