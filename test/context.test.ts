/** Tests of context.ts: --user, the whole probe again as QEMU's user. */

import { describe, expect, test } from "bun:test";
import { chmodSync, existsSync, mkdtempSync, readdirSync, readFileSync, statSync, writeFileSync } from "node:fs";
import type { Report } from "../types.ts";
import { cli, inNamespace, isRoot, pathWith, pids, procOf, QEMU7, unprivileged, world } from "./helpers.ts";

describe("--user (context.ts): the whole probe again, as QEMU's user", () => {
  test.skipIf(!isRoot)("--output is written by the parent, as root, where only root may write", () => {
    const dir = mkdtempSync(`${world}/root-only-`);
    chmodSync(dir, 0o755);
    const run = cli(["--user", "nobody", "--format", "prometheus", "--output", `${dir}/postcopy.prom`]);
    expect([run.code === 0 || run.code === 1, run.stdout, readdirSync(dir)]).toEqual([true, "", ["postcopy.prom"]]);
    expect(statSync(`${dir}/postcopy.prom`).uid).toBe(0);
    expect(readFileSync(`${dir}/postcopy.prom`, "utf8")).toContain('user="nobody"');
  });

  test.skipIf(!isRoot || unprivileged !== "0")("--user nobody answers exactly as a process started as nobody", () => {
    const strip = (r: Report) =>
      JSON.stringify({
        ...r,
        roundTrip: undefined,
        checks: r.checks.map(({ detail, trips, ...c }) => ({ ...c, detail: detail.replace(/\d+ µs/g, "") })),
      });
    const viaUser = cli(["--json", "--user", "nobody"], { path: pathWith(QEMU7) });
    const viaSetpriv = cli(["--json"], { nobody: true, path: pathWith(QEMU7) });
    expect(viaUser.code).toBe(viaSetpriv.code);
    const asked = strip(viaSetpriv.report).replace(
      "probing as nobody (uid 65534)",
      "probing as nobody (uid 65534), as --user asked",
    );
    expect(strip(viaUser.report)).toBe(asked);
  });

  test.skipIf(!isRoot)(
    "an unknown --user, and one whose passwd entry is unsound, give the error document and exit 2",
    () => {
      const unknown = cli(["--json", "--user", "no-such-user"]);
      expect([unknown.code, unknown.report.error]).toEqual([2, 'Unknown user "no-such-user": not in /etc/passwd']);
      writeFileSync(
        `${world}/passwd-bad`,
        "root:x:0:0::/root:/bin/sh\nhollow:x::100::/:/bin/sh\nhuge:x:99999999999:1::/:/bin/sh\n",
      );
      const prefix = inNamespace(`mount --bind ${world}/passwd-bad /etc/passwd && exec "$@"`).concat(["sh"]);
      for (const who of ["hollow", "huge", ""]) {
        const run = cli(["--json", "--user", who], { prefix });
        const error = who
          ? `User "${who}" has no sound uid and gid in /etc/passwd`
          : 'Invalid user "": give a name or a uid';
        expect([who, run.code, run.report.error]).toEqual([who, 2, error]);
      }
    },
  );

  test.skipIf(!isRoot)(
    "a child killed by a signal (the OOM killer) is exit 2 with why, and --output says up 0",
    async () => {
      const output = `${world}/killed.prom`;
      writeFileSync(output, "postcopy_probe_up 1\n");
      const args = ["--user", "nobody", "--bench", "200000", "--format", "prometheus", "--output", output];
      const parent = Bun.spawn([`${world}/bun`, `${world}/probe.ts`, ...args], { stdio: ["ignore", "ignore", "pipe"] });
      const child = async () =>
        pids().find((p) => procOf(p, "stat").split(") ")[1]?.split(" ")[1] === String(parent.pid));
      let pid = await child();
      for (let i = 0; i < 500 && !pid; i++) {
        await Bun.sleep(10);
        pid = await child();
      }
      await Bun.sleep(300);
      process.kill(Number(pid), "SIGKILL");
      expect(await parent.exited).toBe(2);
      expect(await new Response(parent.stderr).text()).toBe(
        "postcopy-probe: The probe's child was killed by SIGKILL: no report\n",
      );
      expect(readFileSync(output, "utf8")).toContain("\npostcopy_probe_up 0\n");
    },
  );

  test.skipIf(!isRoot)("--user with stdout closed is exit 2, said on stderr: never a silent 0", () => {
    const run = Bun.spawnSync(["/bin/sh", "-c", `exec 1>&- && exec ${world}/bun ${world}/probe.ts --user nobody`]);
    expect([run.exitCode, run.stderr.toString()]).toEqual([
      2,
      "postcopy-probe: Cannot write the report: stdout is closed\n",
    ]);
  });

  test.skipIf(!isRoot)("--user refuses a caller that is not root", () => {
    const run = cli(["--user", "root"], { nobody: true });
    expect([run.code, run.stderr.split("\n")[0]]).toEqual([2, "postcopy-probe: --user needs root: this is uid 65534"]);
  });

  test.skipIf(!isRoot || unprivileged !== "0")(
    "the variable that marks the --user child changes nothing when set by hand, and an orphaned child ends",
    () => {
      const spoofed = cli(["--json", "--user", "nobody"], {
        env: { POSTCOPY_PROBE_PARENT: "1" },
        path: pathWith(QEMU7),
      });
      expect([spoofed.code, spoofed.report.host.user, spoofed.report.postcopy]).toEqual([1, "nobody", false]);
      const alone = cli(["--json"], { env: { POSTCOPY_PROBE_PARENT: String(process.pid) }, path: pathWith(QEMU7) });
      expect([alone.code, alone.report.host.user]).toEqual([0, "root"]);
      // A child whose parent died before it could tell names a process that is gone: it ends, starting nothing.
      const gone = Bun.spawnSync(["/bin/true"]).pid;
      const orphan = cli(["--json", "--user", "nobody"], { env: { POSTCOPY_PROBE_PARENT: String(gone) } });
      expect([orphan.code, orphan.report.error, orphan.stderr]).toEqual([
        2,
        "The parent probe is gone",
        "postcopy-probe: The parent probe is gone\n",
      ]);
    },
  );

  test.skipIf(!isRoot)(
    "the --user child dies with its parent, and signals to the parent reach it",
    async () => {
      const find = (parent: number) =>
        Number(
          readdirSync("/proc").find((p) => {
            try {
              return readFileSync(`/proc/${p}/environ`, "latin1").includes(`POSTCOPY_PROBE_PARENT=${parent}\0`);
            } catch {
              return false;
            }
          }),
        );
      for (const signal of ["SIGKILL", "SIGTERM"] as const) {
        const parent = Bun.spawn([`${world}/bun`, `${world}/probe.ts`, "--user", "nobody", "--bench", "40000"], {
          stdio: ["ignore", "ignore", "ignore"],
        });
        let child = 0;
        for (let i = 0; i < 300 && !child; i++) {
          await Bun.sleep(30);
          child = find(parent.pid);
        }
        expect(child).toBeGreaterThan(0);
        parent.kill(signal);
        await parent.exited;
        // Bounded generously: on a loaded host the child may still be starting when its parent goes.
        for (let i = 0; i < 500 && existsSync(`/proc/${child}/status`); i++) await Bun.sleep(20);
        const state = existsSync(`/proc/${child}/status`)
          ? readFileSync(`/proc/${child}/status`, "latin1")
          : "State:\tgone";
        expect([signal, /State:\s+(Z|gone)/.test(state)]).toEqual([signal, true]);
      }
    },
    30_000,
  );
});
