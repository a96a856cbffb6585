/** Tests of all.ts: --all, every QEMU running here answered as --pid answers it, and what a fleet scrapes of it. */

import { describe, expect, test } from "bun:test";
import {
  copyFileSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from "node:fs";
import { renderVms } from "../all.ts";
import type { Report, VmAnswer } from "../types.ts";
import {
  cc,
  cli,
  cmdlineOf,
  complaints,
  DOCKER_CAPS,
  isRoot,
  pids,
  ROOT,
  realQemu,
  sample,
  standIn,
  VM,
  world,
} from "./helpers.ts";

const promtool = Bun.which("promtool");
const python =
  existsSync("/usr/bin/python3") && Bun.spawnSync(["/usr/bin/python3", "-c", "import seccomp"]).exitCode === 0;
const nobody = ["/usr/bin/setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"];

describe("--all (all.ts): every QEMU running here, each answered as --pid answers it", () => {
  test.skipIf(!isRoot || !realQemu || !python)(
    "root, uid 65534 with the sysctl at 0, a seccomp filter, RAM on ext4 and on tmpfs, one that only looks like QEMU: each VM gets --pid's answer",
    async () => {
      copyFileSync(`${ROOT}/test/seccomp-run.py`, `${world}/seccomp-run.py`);
      copyFileSync(`${ROOT}/test/docker-default.json`, `${world}/docker-default.json`);
      const shm = `/dev/shm/postcopy-probe-${process.pid}-all`;
      const ram = (path: string) => [
        ...["-object", `memory-backend-file,id=m0,size=64M,mem-path=${path},share=on`, "-machine", "memory-backend=m0"],
      ];
      const filtered = ["/usr/bin/python3", `${world}/seccomp-run.py`, `${world}/docker-default.json`, DOCKER_CAPS];
      const vms: Array<[name: string, prefix: string[], args: string[]]> = [
        ["default_root-vm", [], []],
        ["nobody-vm", nobody, []],
        ["filtered-vm", filtered, []],
        ["ext4-vm", [], ram(`${world}/all-ram`)],
        ["tmpfs-vm", [], ram(shm)],
      ];
      const started = vms.map(([name, prefix, args]) =>
        Bun.spawn([...prefix, realQemu!, ...VM, "-S", "-name", `guest=${name},debug-threads=on`, ...args], {
          stdio: ["ignore", "ignore", "ignore"],
        }),
      );
      // A process that only looks like one: its first argument says QEMU, the program it runs is sleep.
      const impostor = Bun.spawn(["/bin/bash", "-c", "exec -a qemu-system-x86_64 /bin/sleep 60"], {
        stdio: ["ignore", "ignore", "ignore"],
      });
      try {
        const qemus = () => pids().filter((p) => /-name\0guest=[a-z0-9_-]+-vm,/.test(cmdlineOf(p)));
        for (let i = 0; i < 500 && qemus().length < vms.length; i++) await Bun.sleep(10);
        await Bun.sleep(200); // each past its start-up, so that --pid reads a QEMU that is all there
        const all = cli(["--json", "--all"]);
        const found = new Map((all.report.vms ?? []).map((v) => [v.pid, v]));
        // Each VM, as --pid answers it on its own: the same answer and the same first cause.
        const answers = vms.map(([name], i) => {
          const alone = cli(["--json", "--pid", String(started[i].pid)]).report;
          const v = found.get(started[i].pid);
          return [name, v?.name, v?.answer, v?.cause ?? null, alone.postcopy, alone.diagnosis[0]?.cause ?? null];
        });
        expect(answers).toEqual([
          ["default_root-vm", "default_root-vm", "supported", null, true, null],
          ["nobody-vm", "nobody-vm", "not supported", "unprivileged-userfaultfd", false, "unprivileged-userfaultfd"],
          ["filtered-vm", "filtered-vm", "not supported", "seccomp", false, "seccomp"],
          ["ext4-vm", "ext4-vm", "not supported", "vm-config", false, "vm-config"],
          ["tmpfs-vm", "tmpfs-vm", "supported", null, true, null],
        ]);
        expect(found.get(impostor.pid)).toMatchObject({ answer: "not a qemu" });
        // A VM that cannot go makes it 1; the document holds each VM's own, and the host's answer stays.
        expect([all.code, all.report.postcopy, complaints(all.report)]).toEqual([1, true, []]);
        const human = cli(["--all"]).stdout.split("\n");
        // The count is of every QEMU here: those this test started, and any other this machine runs.
        const every = (all.report.vms ?? []).filter((v) => v.answer !== "not a qemu");
        const n = (a: string) => every.filter((v) => v.answer === a).length;
        const words = `${n("supported")} SUPPORTED, ${n("not supported")} NOT SUPPORTED, ${n("unknown")} UNKNOWN`;
        expect([every.length >= 5, human.at(-3)?.startsWith(`${every.length} QEMUs: ${words}; not QEMUs: `)]).toEqual([
          true,
          true,
        ]);
        expect(human.at(-2)).toBe(
          "This host, for a QEMU started here: Postcopy live migration (QEMU postcopy-ram): SUPPORTED for root (uid 0)",
        );
        if (promtool) {
          const text = cli(["--all", "--format", "prometheus"]).stdout;
          const check = Bun.spawnSync([promtool, "check", "metrics"], { stdin: new TextEncoder().encode(text) });
          expect([check.exitCode, check.stderr.toString()]).toEqual([0, ""]);
          expect(text).toContain('postcopy_probe_vm_cause{vm="filtered-vm",pid=');
        }
      } finally {
        for (const q of [...started, impostor]) q.kill("SIGKILL");
        await Promise.all([...started, impostor].map((q) => q.exited));
        for (const path of [shm, `${world}/all-ram`]) rmSync(path, { force: true });
      }
    },
    60_000,
  );

  test.skipIf(!isRoot || !cc)(
    "a QEMU behind a link of another name is found; a process is left out only when --pid says it is no QEMU, whatever its words say",
    async () => {
      // Proxmox's kvm: a link named otherwise to a QEMU binary (a stand-in here, of QEMU 10's version).
      const dir = mkdtempSync(`${world}/kvm-`);
      copyFileSync(standIn("qemu-system-x86_64", ["-static", '-DVERSION="10.0.0"']), `${dir}/qemu-system-x86_64`);
      symlinkSync(`${dir}/qemu-system-x86_64`, `${dir}/kvm`);
      // A QEMU whose version cannot be read, in a directory whose name reads like --pid's words for no QEMU.
      const spoof = `${world}/is not a QEMU`;
      mkdirSync(spoof, { recursive: true, mode: 0o755 });
      copyFileSync(standIn("qemu-system-x86_64", ["-static", "-DNO_VERSION"]), `${spoof}/qemu-system-x86_64`);
      const kvm = Bun.spawn([`${dir}/kvm`, "-name", "guest=linked"], { stdio: ["ignore", "ignore", "ignore"] });
      const unread = Bun.spawn([`${spoof}/qemu-system-x86_64`, "-name", "guest=unread"], {
        stdio: ["ignore", "ignore", "ignore"],
      });
      try {
        for (let i = 0; i < 300 && [kvm, unread].some((p) => !existsSync(`/proc/${p.pid}/comm`)); i++)
          await Bun.sleep(10);
        await Bun.sleep(100);
        const vms = new Map((cli(["--json", "--all"]).report.vms ?? []).map((v) => [v.pid, v]));
        expect([vms.get(kvm.pid)?.name, vms.get(kvm.pid)?.answer, vms.get(kvm.pid)?.qemu]).toEqual([
          "linked",
          "supported",
          "10.0.0",
        ]);
        expect([vms.get(unread.pid)?.name, vms.get(unread.pid)?.answer]).toEqual(["unread", "unknown"]);
      } finally {
        for (const p of [kvm, unread]) p.kill("SIGKILL");
        await Promise.all([kvm.exited, unread.exited]);
      }
    },
  );

  test.skipIf(!isRoot || !realQemu)(
    "--require is each VM's too: QEMU 7.2 takes no postcopy beside multifd",
    async () => {
      const q = Bun.spawn([realQemu!, ...VM, "-S", "-name", "guest=multifd-vm"], {
        stdio: ["ignore", "ignore", "ignore"],
      });
      try {
        for (let i = 0; i < 300 && !cmdlineOf(String(q.pid)).includes("multifd-vm"); i++) await Bun.sleep(10);
        await Bun.sleep(200);
        const { code, report } = cli(["--json", "--all", "--require", "postcopy-multifd"]);
        const vm = report.vms?.find((v) => v.pid === q.pid);
        expect([code, vm?.answer, vm?.cause]).toEqual([1, "not supported", "qemu-multifd"]);
      } finally {
        q.kill("SIGKILL");
        await q.exited;
      }
    },
  );

  test("no QEMU running is said plainly, and the exit status is then the host's own", () => {
    const vms: VmAnswer[] = [{ name: "x", pid: 9, user: null, qemu: null, answer: "not a qemu", why: "gone" }];
    const text = renderVms({ ...sample, vms } as Report, "Postcopy live migration (QEMU postcopy-ram): NOT SUPPORTED");
    expect(text.split("\n").slice(-3)).toEqual([
      "No QEMU is running here; not QEMUs: x (gone)",
      "This host, for a QEMU started here: Postcopy live migration (QEMU postcopy-ram): NOT SUPPORTED",
      "",
    ]);
  });

  test("--all goes with no option that names a context of its own, and needs root", () => {
    const runs = [cli(["--all", "--pid", "1"]), cli(["--all", "--user", "nobody"]), cli(["--all", "--migrate"])];
    expect(runs.map((r) => [r.code, r.stderr.split("\n")[0]])).toEqual([
      [2, "postcopy-probe: --all answers each QEMU in its own context: not with --pid"],
      [2, "postcopy-probe: --all answers each QEMU in its own context: not with --user"],
      [2, "postcopy-probe: --all answers each QEMU in its own context: not with --migrate"],
    ]);
    const nobodyRun = cli(["--all"], { nobody: true });
    expect([nobodyRun.code, nobodyRun.stderr.split("\n")[0]]).toEqual([
      2,
      "postcopy-probe: --all needs root: this is uid 65534",
    ]);
  });
});

describe("ready for a fleet: the units and the alert rules in contrib/", () => {
  const analyze = Bun.which("systemd-analyze");
  test.skipIf(!analyze)(
    "the service and its timer verify, and keep every option that would change the answer off",
    () => {
      // systemd-analyze wants the program the unit runs: a copy of the units that runs one that is there.
      const dir = `${world}/units`;
      Bun.spawnSync(["mkdir", "-p", dir]);
      for (const unit of ["postcopy-probe.service", "postcopy-probe.timer"])
        writeFileSync(
          `${dir}/${unit}`,
          readFileSync(`${ROOT}/contrib/${unit}`, "utf8").replace("/usr/local/bin/postcopy-probe", `${world}/bun`),
        );
      const verify = Bun.spawnSync([
        analyze!,
        "verify",
        `${dir}/postcopy-probe.service`,
        `${dir}/postcopy-probe.timer`,
      ]);
      expect([verify.exitCode, verify.stderr.toString()]).toEqual([0, ""]);
      // A mount namespace of its own, a seccomp filter, a device policy or /proc cut down would each change what the
      // probe sees of the host and of every VM: none is set.
      const service = readFileSync(`${ROOT}/contrib/postcopy-probe.service`, "utf8");
      const changing =
        /^(ProtectSystem|ProtectHome|PrivateTmp|PrivateDevices|ReadOnlyPaths|ReadWritePaths|InaccessiblePaths|TemporaryFileSystem|BindPaths|BindReadOnlyPaths|ProtectKernelTunables|ProtectKernelModules|ProtectKernelLogs|ProtectControlGroups|ProtectClock|ProtectHostname|ProtectProc|ProcSubset|PrivateMounts|PrivateUsers|PrivateNetwork|SystemCallFilter|SystemCallArchitectures|RestrictNamespaces|RestrictRealtime|RestrictSUIDSGID|LockPersonality|MemoryDenyWriteExecute|DeviceAllow|DevicePolicy|NoNewPrivileges|CapabilityBoundingSet|AmbientCapabilities|RootDirectory|RootImage)=/m;
      expect(service.match(changing)?.[0] ?? null).toBeNull();
    },
  );

  test.skipIf(!promtool)("the alert rules pass promtool and name the cause", () => {
    const check = Bun.spawnSync([promtool!, "check", "rules", `${ROOT}/contrib/postcopy-probe.rules.yml`]);
    expect([check.exitCode, check.stdout.toString().includes("SUCCESS")]).toEqual([0, true]);
    expect(readFileSync(`${ROOT}/contrib/postcopy-probe.rules.yml`, "utf8")).toContain("{{ $labels.cause }}");
  });
});
