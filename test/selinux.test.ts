/**
 * Tests of selinux.ts: a context judged by the loaded policy through selinuxfs. Here (no SELinux) against a stand-in
 * selinuxfs that answers as the kernel does; on a kernel booted with SELinux enforcing and test/selinux/policy.cil
 * (test/selinux/run.sh), against the real policy, beside QEMU's own answers.
 */

import { describe, expect, test } from "bun:test";
import { mkdtempSync, writeFileSync } from "node:fs";
import type { Sys } from "../ffi.ts";
import * as K from "../ffi.ts";
import { domainOf, domainsCheck, onDevtmpfs, policyOf } from "../selinux.ts";
import { qemuAnswers, refusedIn } from "../shared.ts";
import type { Answers, Facts, Report } from "../types.ts";
import { causes, check, cli, complaints, facts, qemu10, ROOT, realQemu, sys, withQemu, world } from "./helpers.ts";

/** A policy as selinuxfs shows it: classes with their permissions in order, and what each type may do to each. */
type Policy = {
  enforce?: boolean;
  denyUnknown?: boolean;
  openPerms?: boolean;
  /** Classes the policy declares (their index is their place, from 1), with their permissions (values from 1). */
  classes: Record<string, string[]>;
  /** "SOURCE TARGET CLASS": the permissions allowed. */
  allow: Record<string, string[]>;
  /** The anon inode's type by the creating domain's (a named type_transition). */
  transitions?: Record<string, string>;
  permissive?: string[];
};
const FILE = ["ioctl", "read", "write", "create", "getattr", "setattr", "lock", "relabelfrom", "relabelto", "open"];
const CLASSES = {
  ...{ anon_inode: FILE, chr_file: FILE, capability: ["chown", "dac_override", "sys_ptrace"] },
  process: ["transition", "dyntransition"],
};

/** The probe's Sys with selinuxfs answered from `policy`, as the kernel would (transactions, class files). */
function stand(policy: Policy): Sys & { asked: string[] } {
  const names = Object.keys(policy.classes);
  const typeOf = (context: string) => context.split(":")[2];
  const files = new Map<number, { file: string; reply: string }>();
  const asked: string[] = [];
  const answer = (file: string, request: string) => {
    const [scon, tcon, index, name] = request.split(" ");
    const cls = names[Number(index) - 1];
    if (file === "context") return request;
    if (file === "create") {
      const type = name === "[userfaultfd]" ? policy.transitions?.[typeOf(scon)] : undefined;
      const [user, , , ...level] = scon.split(":");
      return [user, "object_r", type ?? typeOf(scon), ...level].join(":");
    }
    const allowed = policy.allow[`${typeOf(scon)} ${typeOf(tcon)} ${cls}`] ?? [];
    const bits = allowed.reduce((v, p) => v | (1 << policy.classes[cls].indexOf(p)), 0) >>> 0;
    const permissive = policy.permissive?.includes(typeOf(scon)) ? 1 : 0;
    return `${bits.toString(16)} ffffffff 0 ffffffff 1 ${permissive}`;
  };
  const FS = "/sys/fs/selinux/";
  const text: Record<string, string> = {
    enforce: policy.enforce === false ? "0" : "1",
    deny_unknown: policy.denyUnknown ? "1" : "0",
    "policy_capabilities/open_perms": policy.openPerms === false ? "0" : "1",
    ...Object.fromEntries(names.map((c, i) => [`class/${c}/index`, String(i + 1)])),
    ...Object.fromEntries(
      names.flatMap((c) => policy.classes[c].map((p, i) => [`class/${c}/perms/${p}`, String(i + 1)])),
    ),
  };
  let next = 900;
  return {
    ...sys,
    asked,
    readText: (path: string) => (path.startsWith(FS) ? (text[path.slice(FS.length)] ?? null) : sys.readText(path)),
    open: (path: string, flags: number) => {
      if (!path.startsWith(FS)) return sys.open(path, flags);
      files.set(next, { file: path.slice(FS.length), reply: "" });
      return { ret: next++, errno: 0 };
    },
    write: (fd: number, data: string | Uint8Array) => {
      const open = files.get(fd);
      if (!open) return sys.write(fd, data);
      asked.push(`${open.file}: ${data}`);
      open.reply = answer(open.file, String(data));
      return { ret: String(data).length, errno: 0 };
    },
    read: (fd: number, buf: K.Buf) => {
      const open = files.get(fd);
      if (!open) return sys.read(fd, buf);
      const bytes = K.cstr(open.reply).subarray(0, open.reply.length);
      (buf as Uint8Array).set(bytes);
      return { ret: bytes.length, errno: 0 };
    },
    close: (fd: number) => (files.delete(fd) ? { ret: 0, errno: 0 } : sys.close(fd)),
  };
}

/** A file labelled as /dev/userfaultfd is on Fedora: security.selinux set by root (no LSM needs to be on). */
const NODE = `${world}/userfaultfd-node`;
writeFileSync(NODE, "");
Bun.spawnSync([
  "/usr/bin/python3",
  "-c",
  "import os,sys; os.setxattr(sys.argv[1], 'security.selinux', b'system_u:object_r:userfaultfd_device_t:s0\\0')",
  NODE,
]);

const SVIRT = "system_u:system_r:svirt_t:s0:c1,c2";
const CONTAINER = "system_u:system_r:container_t:s0:c671,c856";
const ALL = ["create", "getattr", "ioctl", "read", "write"];
const judge = (policy: Policy, context: string, more: { ptrace?: boolean; device?: string | null } = {}) => {
  const s = stand(policy);
  const q = { whose: "libvirt's QEMU", scope: "qemu" as const, device: NODE, anonChecked: true, ...more };
  return domainOf(s, policyOf(s), context, q);
};

// The stand-in's answers are the kernel's where SELinux is off; where it is on, the real policy answers (below).
const selinuxOn = sys.readText("/sys/fs/selinux/enforce") !== null;

describe.skipIf(selinuxOn)("selinux.ts: a context judged on each route, as the kernel would answer it", () => {
  test("RHEL 10.2: container_t's [userfaultfd] becomes userfaultfd_t, which it may not create: every route refused, the rule and the package that ships it", () => {
    const rhel: Policy = {
      classes: CLASSES,
      transitions: { container_t: "userfaultfd_t", svirt_t: "userfaultfd_t" },
      allow: { "svirt_t userfaultfd_t anon_inode": ALL },
    };
    const d = judge(rhel, CONTAINER);
    expect(d).toEqual({
      ...{ whose: "libvirt's QEMU", context: CONTAINER, scope: "qemu", permissive: [] },
      denied: { "device-node": "EACCES", device: "EACCES", syscall: "EACCES", "user-mode-only": "EACCES" },
      says: [
        `avc: denied { create ioctl read } for anonclass=[userfaultfd] scontext=${CONTAINER} tcontext=system_u:object_r:userfaultfd_t:s0:c671,c856 tclass=anon_inode`,
        `avc: denied { open read write ioctl } for path=/dev/userfaultfd scontext=${CONTAINER} tcontext=system_u:object_r:userfaultfd_device_t:s0 tclass=chr_file`,
      ],
      rules: [
        "(allow container_t userfaultfd_t (anon_inode (create ioctl read)))",
        "(allow container_t userfaultfd_device_t (chr_file (open read write ioctl)))",
      ],
    });
    // svirt_t has the rule: nothing on the anon inode is refused; the device (labelled, granted to nobody) is.
    expect(judge(rhel, SVIRT).denied).toEqual({ "device-node": "EACCES", device: "EACCES" });
  });

  test("the device opened but USERFAULTFD_IOC_NEW refused: the device route only, and QEMU 8.0+ does not fall back", () => {
    const noIoctl: Policy = {
      classes: CLASSES,
      allow: { "svirt_t svirt_t anon_inode": ALL, "svirt_t userfaultfd_device_t chr_file": ["open", "read", "write"] },
    };
    const d = judge(noIoctl, SVIRT);
    expect([d.denied, d.rules]).toEqual([
      { device: "EACCES" },
      ["(allow svirt_t userfaultfd_device_t (chr_file (ioctl)))"],
    ]);
    const f = { selinux: "enforcing", domains: [d] } as unknown as Facts;
    const a: Answers = { "device-node": "ok", device: "ok", syscall: "ok", "user-mode-only": "ok" };
    const qemu10 = { path: "/usr/bin/qemu-system-x86_64", version: "10.0.0", major: 10, ptrace: false };
    const qemu7 = { ...qemu10, version: "7.2.0", major: 7 };
    expect([domainsCheck(f, a, qemu10).status, domainsCheck(f, a, qemu7).status]).toEqual(["fail", "pass"]);
  });

  test("only the fault events' read refused: QEMU's host check passes, and postcopy fails once it runs", () => {
    const noRead: Policy = {
      classes: CLASSES,
      allow: { "svirt_t svirt_t anon_inode": ["create", "ioctl"] },
    };
    const d = judge(noRead, SVIRT, { device: null });
    expect([d.denied, d.says]).toEqual([
      { device: "EACCES", syscall: "EACCES", "user-mode-only": "EACCES" },
      [
        `avc: denied { read } for anonclass=[userfaultfd] scontext=${SVIRT} tcontext=system_u:object_r:svirt_t:s0:c1,c2 tclass=anon_inode (once postcopy runs, after precopy)`,
      ],
    ]);
  });

  test("a permissive domain, and permissive mode, refuse nothing: what they would refuse is said", () => {
    const policy: Policy = { classes: CLASSES, allow: {}, permissive: ["svirt_t"] };
    const [domain, mode] = [judge(policy, SVIRT), judge({ ...policy, permissive: [], enforce: false }, SVIRT)];
    for (const d of [domain, mode]) expect([d.denied, d.says, d.permissive.length]).toEqual([{}, [], 2]);
  });

  test("CAP_SYS_PTRACE, where the syscall needs it, refused by the policy: the syscall says EPERM", () => {
    const policy: Policy = {
      classes: CLASSES,
      allow: { "svirt_t svirt_t anon_inode": ALL, "svirt_t userfaultfd_device_t chr_file": FILE },
    };
    expect([judge(policy, SVIRT, { ptrace: true }).denied, judge(policy, SVIRT).denied]).toEqual([
      { syscall: "EPERM" },
      {},
    ]);
  });

  test("a class the policy does not declare is allowed or refused whole, as deny_unknown says; open needs open_perms", () => {
    const bare: Policy = { classes: { chr_file: FILE }, allow: { "svirt_t userfaultfd_device_t chr_file": ["read"] } };
    const allowed = judge({ ...bare, openPerms: false }, SVIRT, { device: NODE });
    const denied = judge({ ...bare, denyUnknown: true, openPerms: true }, SVIRT);
    expect(allowed.says).toEqual([
      `avc: denied { write ioctl } for path=/dev/userfaultfd scontext=${SVIRT} tcontext=system_u:object_r:userfaultfd_device_t:s0 tclass=chr_file`,
    ]);
    expect([denied.denied.syscall, denied.says.length]).toEqual(["EACCES", 2]);
  });

  test("a permissive domain is permissive for a class the policy does not declare too; no rule names what it lacks", () => {
    const bare: Policy = { classes: { chr_file: FILE, process: ["transition"] }, allow: {}, permissive: ["svirt_t"] };
    const permissive = judge({ ...bare, denyUnknown: true }, SVIRT, { device: null, ptrace: true });
    expect([permissive.denied, permissive.permissive.length]).toEqual([{}, 2]);
    const enforcing = judge({ ...bare, permissive: [], denyUnknown: true }, SVIRT, { device: null, ptrace: true });
    // anon_inode and capability are undeclared: refused whole, and a local module could name neither.
    expect([enforcing.denied, enforcing.rules]).toEqual([
      { device: "EACCES", syscall: "EPERM", "user-mode-only": "EACCES" },
      [],
    ]);
  });

  test("the kernel's earlier gates keep their answer; QEMU's file capability meets its contexts' sys_ptrace", () => {
    const denied = {
      "device-node": "EACCES",
      device: "EACCES",
      syscall: "EACCES",
      "user-mode-only": "EACCES",
    } as const;
    const domains = [{ scope: "qemu", denied, ptraceRefused: true }];
    const base = { ...facts, domains, seccomp: 0, noNewPrivs: false, libvirt: null } as unknown as Facts;
    // The mode refused the node, the sysctl the syscall: those answers stand; the user-mode-only route opened.
    const a: Answers = { "device-node": "EACCES", device: "EACCES", syscall: "EPERM", "user-mode-only": "ok" };
    expect(refusedIn(a, base, "qemu")).toEqual({ ...a, "user-mode-only": "EACCES" });
    const capped = { path: "/usr/bin/qemu-system-x86_64", version: "7.2.0", major: 7, ptrace: true };
    const cleared = { ...base, domains: [{ scope: "qemu", denied: {}, ptraceRefused: false }] } as unknown as Facts;
    expect([qemuAnswers(a, base, capped).syscall, qemuAnswers(a, cleared, capped).syscall]).toEqual(["EPERM", "ok"]);
  });

  test("a node whose stat() is refused is opened only when it is the device node on devtmpfs, no link followed", () => {
    expect([onDevtmpfs(sys, "/dev/null"), onDevtmpfs(sys, `${world}/userfaultfd-node`)]).toEqual([false, false]);
  });

  test("a selinuxfs that will not answer leaves the context unknown, never a yes", () => {
    const s = stand({ classes: CLASSES, allow: {} });
    const refusing = {
      ...s,
      open: (path: string, flags: number) =>
        path.endsWith("/create") ? { ret: -1, errno: K.errnoOf("EACCES") } : s.open(path, flags),
    };
    const d = domainOf(refusing, policyOf(refusing), SVIRT, { whose: "--context", scope: "all", device: NODE });
    expect([d.unknown, d.denied]).toEqual(["/sys/fs/selinux/create: EACCES", {}]);
  });
});

/**
 * On the policy run.sh loads (test/selinux/policy.cil), in a guest booted for it: never elsewhere, since one test
 * loads a policy with the probe's fix in it, as `semodule -i` would, and then the original again.
 */
const GUEST = process.env.POSTCOPY_PROBE_SELINUX_GUEST ?? "";
const onTestPolicy =
  GUEST.endsWith(".bin") &&
  sys.readText("/sys/fs/selinux/enforce")?.trim() === "1" &&
  Bun.spawnSync(["runcon", "-t", "qemu_fixed_t", "--", "true"]).exitCode === 0;

describe.skipIf(!onTestPolicy)(
  "selinux.ts on a real enforcing policy, beside QEMU 7.2's and QEMU 10's own answers",
  () => {
    // Each domain; what QEMU 7.2 (the syscall) and QEMU 10 (the device, then the syscall) answer in it; and whether the
    // policy refuses a capability there (the selinux cause): the device refused blocks Firecracker's route.
    const CASES: Array<[string, boolean, boolean, boolean]> = [
      ["qemu_ok_t", true, true, false],
      ["qemu_noanon_t", false, false, true],
      ["qemu_nodev_t", true, true, true],
      ["qemu_noioctl_t", false, false, true],
      ["qemu_devioctl_t", true, false, true],
      ["qemu_nostat_t", true, true, false],
      ["qemu_rhel_t", false, false, true],
      ["qemu_fixed_t", true, true, true],
      ["qemu_permissive_t", true, true, false],
    ];
    const nobody = ["/usr/bin/setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"];
    const USERS: Array<[string, string[]]> = [
      ["root", []],
      ["nobody", nobody],
    ];
    const QEMUS: Array<[string, string | null]> = [
      ["7.2", realQemu],
      ["10", qemu10],
    ];
    const runcon = (domain: string) => ["runcon", "-t", domain, "-l", "s0:c1,c2", "--"];
    const context = (domain: string) => `system_u:system_r:${domain}:s0:c1,c2`;
    /** What a run said for each QEMU generation, and whether SELinux is its cause where it said no. */
    const said = (r: Report) => ({
      "7.2": r.probe["qemu<8.0"],
      "10": r.probe["qemu>=8.0"],
      selinux: causes(r).includes("selinux"),
    });

    test("--pid, the default run in the domain and --context agree with QEMU's own answer in every domain", async () => {
      const found: unknown[] = [];
      const expected: unknown[] = [];
      for (const [domain, ok7, ok10, selinux] of CASES)
        for (const [user, as] of USERS) {
          const ok: Record<string, boolean> = { "7.2": ok7, "10": ok10 };
          for (const [version, qemu] of QEMUS) {
            if (!qemu) continue;
            await withQemu(qemu, [...runcon(domain), ...as], [], async (pid, ask) => {
              const qmp = (await ask()) === "yes";
              const { report } = cli(["--json", "--pid", String(pid)]);
              found.push([domain, user, version, "qmp", qmp, "--pid", report.postcopy]);
              expected.push([domain, user, version, "qmp", ok[version], "--pid", ok[version]]);
              // Each no names the selinux cause (uid 65534 also lacks CRIU's CAP_SYS_PTRACE).
              if (!report.postcopy) expect([domain, causes(report).includes("selinux")]).toEqual([domain, true]);
            });
          }
          const inDomain = said(cli(["--json"], { prefix: [...runcon(domain), ...as] }).report);
          const asked = said(
            cli(["--json", "--context", context(domain), ...(user === "root" ? [] : ["--user", user])]).report,
          );
          found.push([domain, user, "in the domain", inDomain, "--context", asked]);
          const verdicts = { ...ok, selinux };
          expected.push([domain, user, "in the domain", verdicts, "--context", verdicts]);
        }
      expect(found).toEqual(expected);
    });

    test("the default run answers for libvirt's QEMU, as the policy's virtual_domain_context names it", () => {
      const file = "/etc/selinux/test/contexts/virtual_domain_context";
      Bun.spawnSync(["mkdir", "-p", "/etc/selinux/test/contexts"]);
      writeFileSync(file, `${context("qemu_rhel_t")}\n${context("qemu_ok_t")}\n`);
      try {
        const { code, report } = cli(["--json"]);
        expect([code, report.postcopy, causes(report), check(report, "selinux").status]).toEqual([
          1,
          false,
          ["selinux"],
          "fail",
        ]);
        expect(report.diagnosis[0].summary).toBe(
          "SELinux refuses libvirt's QEMU (virtual_domain_context) what a userfaultfd needs",
        );
        expect(complaints(report)).toEqual([]);
      } finally {
        Bun.spawnSync(["rm", "-f", file]);
      }
    });

    test("a permissive domain refuses nothing, and says what it would refuse when enforcing: a warning", () => {
      const { code, report } = cli(["--json", "--context", context("qemu_permissive_t")]);
      const selinux = check(report, "selinux");
      expect([code, report.postcopy, causes(report), selinux.status]).toEqual([0, true, [], "warn"]);
      expect(selinux.detail).toContain(
        `--context (${context("qemu_permissive_t")}): would refuse, were it enforcing: `,
      );
    });

    test("the printed fix, loaded as semodule -i would, makes QEMU 7.2 and 10 accept postcopy; the probe then says yes", async () => {
      const { report } = cli(["--json", "--context", context("qemu_rhel_t")]);
      const module = report.diagnosis.find((d) => d.cause === "selinux")!.fix.find((f) => f.startsWith("printf"))!;
      expect(module).toStartWith("printf '%s\\n' '(allow qemu_rhel_t userfaultfd_t (anon_inode (create ioctl read)))'");
      const dir = mkdtempSync(`${world}/module-`);
      // The printed command, as pasted, up to semodule (which needs a policy store): secilc builds what it would load.
      const [write] = module.split(" && semodule");
      const file = write.match(/> (postcopy_qemu_rhel_t_[0-9a-f]+\.cil)$/)![1];
      Bun.spawnSync(["/bin/sh", "-c", write], { cwd: dir });
      const built = Bun.spawnSync([
        "secilc",
        "-o",
        `${dir}/policy.bin`,
        "-f",
        "/dev/null",
        `${ROOT}/test/selinux/policy.cil`,
        `${dir}/${file}`,
      ]);
      expect([built.exitCode, built.stderr.toString()]).toEqual([0, ""]);
      const load = (bin: string) => Bun.spawnSync(["/bin/sh", "-c", `cat ${bin} > /sys/fs/selinux/load`]).exitCode;
      expect(load(`${dir}/policy.bin`)).toBe(0);
      try {
        const answers: unknown[] = [];
        for (const [version, qemu] of QEMUS)
          if (qemu)
            await withQemu(qemu, runcon("qemu_rhel_t"), [], async (_, ask) => answers.push([version, await ask()]));
        const after = cli(["--json", "--context", context("qemu_rhel_t")]).report;
        expect([answers, after.postcopy, causes(after)]).toEqual([
          QEMUS.filter(([, q]) => q).map(([v]) => [v, "yes"]),
          true,
          [],
        ]);
      } finally {
        expect(load(GUEST)).toBe(0);
      }
    });
  },
);
