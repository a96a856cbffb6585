/** Tests of migrate.ts: --migrate, a real postcopy migration between two QEMUs. */

import { afterAll, describe, expect, test } from "bun:test";
import {
  chmodSync,
  copyFileSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { dirname } from "node:path";
import { multifdWith } from "../qemu.ts";
import type { Report } from "../types.ts";
import {
  causes,
  check,
  cli,
  cmdlineOf,
  isRoot,
  NO_QEMU,
  pathWith,
  pids,
  procOf,
  qemu10,
  realQemu,
  unprivileged,
  withQemu,
  world,
} from "./helpers.ts";

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
