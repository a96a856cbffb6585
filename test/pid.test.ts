/** Tests of pid.ts: --pid, a running QEMU in its own context, and as a hostile target (the walk's own: walk.test.ts). */

import { describe, expect, test } from "bun:test";
import {
  chmodSync,
  copyFileSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  realpathSync,
  rmdirSync,
  rmSync,
  symlinkSync,
  truncateSync,
  writeFileSync,
} from "node:fs";
import { runInContext } from "../context.ts";
import { devicesAllow } from "../pid.ts";
import { versionIn } from "../qemu.ts";
import type { Check, Report, Seen } from "../types.ts";
import {
  blocked,
  causes,
  cc,
  check,
  cli,
  cmdlineOf,
  deviceOpenTo,
  diagnoseOf,
  facts,
  inNamespace,
  isRoot,
  migrate,
  pids,
  procOf,
  qemu10,
  realQemu,
  routesOf,
  seccompScript,
  standIn,
  sys,
  traceOpens,
  unprivileged,
  withQemu,
  withTarget,
  world,
} from "./helpers.ts";

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

  /** A 64 MiB RAM file in /dev/shm for each side, made here (a read-only one must exist), removed after. */
  const shmRam = (name: string, more: string) => {
    const path = (side: string) => `/dev/shm/postcopy-probe-${process.pid}-${name}-${side}`;
    const args = (side: string) => {
      if (!existsSync(path(side))) writeFileSync(path(side), "");
      truncateSync(path(side), 64 << 20);
      return [
        "-object",
        `memory-backend-file,id=ram0,size=64M,mem-path=${path(side)},${more}`,
        "-machine",
        "memory-backend=ram0",
      ];
    };
    const remove = () => {
      for (const side of ["probed", "src", "dst"]) rmSync(path(side), { force: true });
    };
    return { args, remove };
  };
  const versions: Array<[string, string | null]> = [
    ["7.2", realQemu],
    ["10", qemu10],
  ];

  test.skipIf(skip)(
    "vm-readonly: a RAM file opened read-only: QEMU 7.2 and 10 accept postcopy-ram, then the migration fails as it starts, in the words the check gives",
    async () => {
      const ram = shmRam("readonly", "readonly=on,share=on");
      const normal = (side: string) =>
        side === "src"
          ? ["-object", "memory-backend-ram,id=ram0,size=64M", "-machine", "memory-backend=ram0"]
          : ram.args(side);
      try {
        for (const [version, qemu] of versions) {
          if (!qemu) continue;
          await withQemu(qemu, [], ram.args("probed"), async (pid, ask) => {
            const { code, report } = byPid(pid);
            expect([version, await ask(), code, report.postcopy, causes(report)]).toEqual([
              version,
              "yes",
              1,
              false,
              ["vm-config"],
            ]);
            // A background snapshot discards no RAM: it is spared (measured: QEMU 10 snapshots such a VM).
            expect([version, report.capabilities["background-snapshot"]]).toEqual([version, true]);
          });
          const seen: { dst?: string } = {};
          const end = await migrate(qemu, normal, seen);
          const words =
            version === "7.2"
              ? "ram_block_discard_range: Failed to fallocate ram0:0 +4000000 (-9)"
              : "ram_block_discard_range: Discarding RAM with readonly files is not supported";
          expect([version, end, seen.dst?.includes(words)]).toEqual([version, "failed", true]);
        }
        await withQemu(realQemu!, [], ram.args("probed"), async (pid) => {
          expect(check(byPid(pid).report, "vm-readonly").detail).toBe(
            'read-only RAM files (ram0): QEMU accepts postcopy-ram, then its destination fails when the migration starts: "ram_block_discard_range: Failed to fallocate ram0:0 +… (-9)" (QEMU before 8.2)',
          );
        });
      } finally {
        ram.remove();
      }
    },
    60000,
  );

  test.skipIf(skip)(
    "vm-private: a RAM file mapped private: the migration completes (7.2 and 10), QEMU 10 warns as the check says; a warning, and a yes",
    async () => {
      const ram = shmRam("private", "share=off");
      try {
        for (const [version, qemu] of versions) {
          if (!qemu) continue;
          await withQemu(qemu, [], ram.args("probed"), async (pid, ask) => {
            const { code, report } = byPid(pid);
            expect([version, await ask(), code, report.postcopy, check(report, "vm-private").status]).toEqual([
              version,
              "yes",
              0,
              true,
              "warn",
            ]);
          });
          const seen: { dst?: string } = {};
          expect([version, await migrate(qemu, ram.args, seen)]).toEqual([version, "completed"]);
          const warned = seen.dst?.includes(
            "Discarding RAM in private file mappings is possibly dangerous, because it will modify the underlying file and will affect other users of the file",
          );
          expect([version, warned]).toEqual([version, version !== "7.2"]);
        }
      } finally {
        ram.remove();
      }
    },
    60000,
  );

  test.skipIf(!isRoot || !cc)(
    "vm-confidential: an SEV-SNP guest, as libvirt starts it (no SEV here: a stand-in with its command line): a no, in QEMU's words",
    async () => {
      const q = standIn("qemu-system-x86_64", ["-static", '-DVERSION="10.0.0"']);
      const sev = '{"qom-type":"sev-snp-guest","id":"lsec0","cbitpos":51,"reduced-phys-bits":1}';
      await withTarget([q, "-machine", "pc-q35-10.0,confidential-guest-support=lsec0", "-object", sev], {}, (pid) => {
        const { code, report } = byPid(pid);
        expect([code, report.postcopy, causes(report), check(report, "vm-confidential").detail]).toEqual([
          1,
          false,
          ["vm-config"],
          'a confidential guest (sev-snp-guest): "SEV-SNP: Migration is not implemented" (the source refuses to migrate it at all)',
        ]);
      });
    },
  );

  const pool = "/sys/kernel/mm/hugepages/hugepages-2048kB";
  const poolOf = (n: string) => Number(readFileSync(`${pool}/${n}`, "utf8"));
  test.skipIf(skip || !existsSync(pool) || poolOf("nr_hugepages") >= 32)(
    "vm-hugepages: an incoming VM on hugetlbfs (reserve=off) whose 64 MiB this host's pool cannot hold: QEMU accepts, the probe says no, with the fix sized to it",
    async () => {
      const dir = mkdtempSync(`${world}/hugetlbfs-`);
      // hugetlbfs mounted in the QEMU's own mount namespace: nothing of it on the host.
      const prefix = [...inNamespace(`mount -t hugetlbfs none ${dir} && exec "$@"`), "sh"];
      const backend = `memory-backend-file,id=ram0,size=64M,mem-path=${dir},share=on,reserve=off`;
      await withQemu(realQemu!, prefix, ["-object", backend, "-machine", "memory-backend=ram0"], async (pid, ask) => {
        const { code, report } = byPid(pid);
        const needed = 32 + poolOf("nr_hugepages") - poolOf("free_hugepages");
        expect([await ask(), code, report.postcopy, causes(report)]).toEqual(["yes", 1, false, ["vm-hugepages"]]);
        expect(check(report, "vm-hugepages").detail).toStartWith(
          "hugetlbfs: 64 MiB in 32 pages of 2 MiB (this host's pool has ",
        );
        expect(report.diagnosis[0].fix).toEqual([
          `echo ${needed} > ${pool}/nr_hugepages   # room for this VM's pages beside those in use; read it back: the kernel may grant fewer`,
        ]);
      });
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
        miscMinor: 126,
        devnode: { mode: "crw-------", kind: "c 10:126", owner: "root", group: "root", uid: 0, gid: 0 },
        sysctlSource: { file: "/etc/sysctl.d/99-zz$(id).conf", value: "0" },
      };
      const routes = { "device-node": "EACCES", device: "EACCES", syscall: "EPERM", "user-mode-only": "ok" };
      const opened = [{ id: "uffd-open", title: "", status: "fail", detail: "", routes } as Check];
      const fixes = diagnoseOf(f, opened, undefined, grantable).flatMap((d) => d.fix);
      const words = Object.fromEntries(fixes.map((x) => [x.split(" ")[0], shellWords(x.split("   #")[0])]));
      expect(words.setcap).toEqual(["setcap", "cap_sys_ptrace+ep", hostile]);
      expect(words.usermod).toEqual(["usermod", "-aG", "kvm", "a b;c"]);
      // The process's own devices cgroup, named by the path /proc shows: quoted in the rule --pid adds.
      const cgroup = devicesAllow(sys, "/sys/fs/cgroup/devices/x'y;z").fix![0] as (s: Seen) => string;
      expect(shellWords(cgroup({ f } as unknown as Seen).split("   #")[0])).toEqual([
        "echo",
        "c 10:126 rw",
        ">",
        "/sys/fs/cgroup/devices/x'y;z/devices.allow",
      ]);
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
});
