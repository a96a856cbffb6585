/** Tests of apparmor.ts: a process's AppArmor profile, taken on by a thread of the probe. */

import { describe, expect, test } from "bun:test";
import { existsSync, writeFileSync } from "node:fs";
import { cli, deviceOpenTo, isRoot, qemu10, realQemu, routesOf, unprivileged, withQemu, world } from "./helpers.ts";

describe("--pid (apparmor.ts): the process's AppArmor profile, taken on by a thread of the probe", () => {
  // Where AppArmor is on (Debian's 6.12 kernel, booted by ../shared/kernels, with securityfs mounted).
  const apparmor = existsSync("/sys/kernel/security/apparmor") && Bun.which("apparmor_parser") && Bun.which("aa-exec");
  const nobody = ["/usr/bin/setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"];

  test.skipIf(!isRoot || !apparmor || !realQemu || unprivileged !== "0")(
    "apparmor: under a profile without the device (0666 to it, sysctl 0), --pid says what QEMU 7.2 and 10 say",
    async () => {
      const name = `postcopy-probe-test-${process.pid}`;
      const rules = [
        "file,",
        "capability,",
        "network,",
        "signal,",
        "ptrace,",
        "unix,",
        "deny /dev/userfaultfd rw,",
        "deny capability sys_ptrace,",
      ];
      writeFileSync(
        `${world}/${name}`,
        `abi <abi/3.0>,\nprofile ${name} flags=(attach_disconnected) {\n  ${rules.join("\n  ")}\n}\n`,
      );
      expect(Bun.spawnSync([Bun.which("apparmor_parser")!, "-r", `${world}/${name}`]).exitCode).toBe(0);
      try {
        for (const q of [realQemu!, ...(qemu10 ? [qemu10] : [])]) {
          const prefix = [...deviceOpenTo("0666"), Bun.which("aa-exec")!, "-p", name, "--", ...nobody];
          await withQemu(q, prefix, [], async (pid, ask) => {
            const { code, report } = cli(["--json", "--pid", String(pid)]);
            expect([q, (await ask()).startsWith("no: Postcopy is not supported"), code, report.postcopy]).toEqual([
              q,
              true,
              1,
              false,
            ]);
            const cause = report.diagnosis.find((d) => d.cause === "apparmor");
            expect([routesOf(report)["device-node"], cause?.evidence, cause?.fix[0]]).toEqual([
              "EACCES",
              ["open of /dev/userfaultfd under it: EACCES"],
              `echo '/dev/userfaultfd rw,' >> /etc/apparmor.d/local/${name}`,
            ]);
            expect(report.diagnosis.flatMap((d) => d.fix).filter((f) => f.startsWith("setcap"))).toEqual([]);
          });
        }
      } finally {
        Bun.spawnSync([Bun.which("apparmor_parser")!, "-R", `${world}/${name}`]);
      }
    },
    120_000,
  );
});
