/** Tests of diagnosis.ts: the cause table, under real denials and as a decision table. */

import { describe, expect, test } from "bun:test";
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { CAUSE_IDS } from "../diagnosis.ts";
import * as K from "../ffi.ts";
import { CAUSES as PID_CAUSES } from "../pid.ts";
import { probe } from "../probe.ts";
import { CAUSES as QEMU_CAUSES } from "../qemu.ts";
import { CAUSES as SELINUX_CAUSES } from "../selinux.ts";
import type { Capability, Check, Domain, Evidence, Facts, Report } from "../types.ts";
import { CAUSES as VM_CAUSES } from "../vm.ts";
import {
  causes,
  check,
  cli,
  diagnoseOf,
  facts,
  inNamespace,
  isRoot,
  opts,
  pathWith,
  QEMU_CAPS,
  QEMU7,
  QEMU10,
  ROOT,
  sys,
  underSeccomp,
  unprivileged,
  world,
} from "./helpers.ts";

describe("diagnosis under real denials", () => {
  test.skipIf(!isRoot || unprivileged !== "0")(
    "unprivileged-userfaultfd and devnode-permission: as uid 65534 with QEMU 7.2, the sysctl, and the device only for Firecracker and Cloud Hypervisor",
    () => {
      const { code, report } = cli(["--json"], { nobody: true, path: pathWith(QEMU7) });
      expect(code).toBe(1);
      const sysctl = report.diagnosis.find((d) => d.cause === "unprivileged-userfaultfd")!;
      expect(sysctl).toMatchObject({
        summary: "vm.unprivileged_userfaultfd is 0 and this user lacks CAP_SYS_PTRACE",
        blocks: [...QEMU_CAPS, "criu-lazy-pages", "cloud-hypervisor"],
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
      expect(report.diagnosis.find((d) => d.cause === "devnode-permission")?.blocks).toEqual([
        "firecracker-uffd",
        "cloud-hypervisor",
      ]);
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
      // Headline first: what blocks postcopy-ram, then the device's mode, which blocks Firecracker only.
      expect(causes(report)).toEqual(["seccomp", "unprivileged-userfaultfd", "devnode-permission"]);
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
    selinux: null,
    gvisor: false,
    libvirt: null,
    qemuUser: "qemu",
    kvmGroup: true,
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
  const AS_ROOT = { uid: 0, user: "root", capSysPtrace: true };
  const DENIED_DEVICE: Answers = ["EACCES", "EACCES", "ok", "ok"];
  const DEVICE_DENIED = { "device-node": "EACCES", device: "EACCES" };
  const vfio: Check = { id: "vm-devices", title: "", status: "fail", detail: "vfio", hint: "detach the VFIO device" };
  const shortPool: Check = { id: "vm-hugepages", title: "", status: "fail", detail: "hugetlbfs", hint: "echo 32 > F" };
  /** This run's context, refused the anon inode on both routes: the kernel said EACCES there. */
  const noAnon: Domain = {
    ...{ whose: "this run", context: "system_u:system_r:qemu_t:s0", scope: "self", permissive: [] },
    denied: { device: "EACCES", syscall: "EACCES", "user-mode-only": "EACCES" },
    says: ["avc: denied { create } for anonclass=[userfaultfd] tclass=anon_inode"],
    rules: ["(allow qemu_t qemu_t (anon_inode (create)))"],
  };
  const QEMU_DOMAIN: Answers = ["ok", "EACCES", "EACCES", "EACCES"];
  const [DENIED, OPEN] = [["EACCES", "EACCES", "EPERM", "ok"] as Answers, ["ok", "ok", "ok", "ok"] as Answers];

  /** For each cause: the least that must produce it, all it then names, and a near miss (one thing changed) that must not. */
  const TABLE: Array<{ cause: string; hit: Case; causes: string[]; miss: Case }> = [
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
      cause: "selinux",
      hit: { facts: { selinux: "enforcing", unprivilegedUserfaultfd: 1, domains: [noAnon] }, routes: QEMU_DOMAIN },
      causes: ["selinux"],
      // The same refusals in a permissive domain are said, not refused.
      miss: {
        facts: { selinux: "enforcing", unprivilegedUserfaultfd: 1, domains: [{ ...noAnon, permissive: noAnon.says }] },
        routes: QEMU_DOMAIN,
      },
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
        facts: { ...AS_ROOT, apparmor: { profile: "libvirt-f00d", denied: DEVICE_DENIED, ptrace: null } },
        routes: DENIED_DEVICE,
      },
      causes: ["apparmor"],
      miss: {
        facts: { ...AS_ROOT, apparmor: { profile: "libvirt-f00d", denied: {}, ptrace: null } },
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
      cause: "vm-hugepages",
      hit: { routes: OPEN, vm: [shortPool] },
      causes: ["vm-hugepages"],
      miss: { routes: OPEN, vm: [{ ...shortPool, status: "pass" }] },
    },
  ];

  /** How QEMU's user (qemu) gets into the device: the same recipe wherever it is given. */
  const ACCESS = [
    "usermod -aG kvm qemu   # QEMU started after this gets it",
    `echo 'KERNEL=="userfaultfd", GROUP="kvm", MODE="0660"' > /etc/udev/rules.d/99-userfaultfd.rules   # each boot`,
    "chgrp kvm /dev/userfaultfd && chmod 0660 /dev/userfaultfd   # now",
  ];

  test("no-kernel-support: gVisor, which implements no userfaultfd, is a line of its evidence, with runc as the fix", () => {
    const gvisor = { gvisor: true, miscMinor: null, unprivilegedUserfaultfd: null, kernel: "4.4.0" };
    const d = diagnoseOf({ ...base, ...gvisor }, opened(["ENOENT", "ENOENT", "ENOSYS", "ENOSYS"]));
    expect(d.find((x) => x.cause === "no-kernel-support")).toMatchObject({
      evidence: [
        "/proc/version: gVisor (release 4.4.0), which implements no userfaultfd",
        "userfaultfd(2): ENOSYS, with UFFD_USER_MODE_ONLY: ENOSYS",
      ],
      fix: [
        "docker run --runtime=runc ...   # not --runtime=runsc",
        "kubectl edit pod ...   # drop runtimeClassName: gvisor",
      ],
    });
    expect(diagnoseOf({ ...base, gvisor: true }, opened(OPEN))).toEqual([]);
  });

  test("causes come headline-first: what blocks the capabilities the exit status stands for, then the rest", () => {
    // uid 65534, the sysctl at 0, the node 0600, QEMU 7.2: the sysctl blocks QEMU, the node's mode Firecracker.
    const denied = opened(["EACCES", "EACCES", "EPERM", "ok"]);
    const order = (required: Capability[]) =>
      diagnoseOf({ ...base, user: "nobody", uid: 65534 }, denied, undefined, qemu7, [], required).map((d) => d.cause);
    expect([order(["postcopy-ram"]), order(["firecracker-uffd"])]).toEqual([
      ["unprivileged-userfaultfd", "devnode-permission"],
      ["devnode-permission", "unprivileged-userfaultfd"],
    ]);
  });

  test("every cause has a row in this table and an entry in the README's cause table", () => {
    const ids: string[] = [
      ...CAUSE_IDS,
      ...Object.keys(QEMU_CAUSES),
      ...Object.keys(PID_CAUSES),
      ...Object.keys(VM_CAUSES),
      ...Object.keys(SELINUX_CAUSES),
    ];
    expect(TABLE.map((row): string => row.cause).sort()).toEqual(ids.sort());
    const readme = readFileSync(`${ROOT}/README.md`, "utf8");
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

  test("devnode-permission: one recipe (the kvm group, a udev rule, the node now), the group made where missing, each fix once", () => {
    const withGroup = diagnoseOf(base, opened(DENIED), undefined, null).find((d) => d.cause === "devnode-permission")!;
    expect(withGroup.fix).toEqual(ACCESS);
    const bare = diagnoseOf({ ...base, kvmGroup: false }, opened(DENIED), undefined, null);
    expect(bare.find((d) => d.cause === "devnode-permission")!.fix).toEqual(["groupadd -r kvm", ...ACCESS]);
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
    const fixes = (cause: string, routes: Answers, f: Partial<Facts> = {}) =>
      diagnoseOf({ ...base, ...f }, opened(routes)).find((d) => d.cause === cause)!.fix;
    const access = ACCESS;
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
    expect(fixes("devnode-missing", ["ENOENT", "ENOENT", "ok", "ok"], AS_ROOT)).toEqual([
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
