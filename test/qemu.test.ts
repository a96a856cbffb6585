/** Tests of qemu.ts: the QEMU that will run, its version, and its own answer over QMP (--qemu). */

import { describe, expect, test } from "bun:test";
import { chownSync, mkdirSync, realpathSync, rmSync, symlinkSync } from "node:fs";
import { basename, dirname } from "node:path";
import * as K from "../ffi.ts";
import { probe, renderHuman } from "../probe.ts";
import { askQemu, identify, pipe, poll, qemuAnswer, setcap } from "../qemu.ts";
import { renderPrometheus } from "../textfile.ts";
import type { Capability, Qemu, Seen } from "../types.ts";
import {
  causes,
  check,
  cli,
  cmdlineOf,
  facts,
  isRoot,
  NO_QEMU,
  opts,
  pathWith,
  pids,
  qemu10,
  qemuDir,
  realQemu,
  sys,
  underSeccomp,
  unprivileged,
  world,
} from "./helpers.ts";

describe("--qemu (qemu.ts): the QEMU's own answer is the headline", () => {
  const GREETING = `echo '{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}, "package": ""}, "capabilities": []}}'`;
  const answers = (...lines: string[]) => [GREETING, ...lines.map((l) => `read l; echo '${l}'`)].join("\n");
  const REJECTS = answers(
    '{"return": {}}',
    '{"error": {"class": "GenericError", "desc": "Postcopy is not supported"}}',
    '{"return": {}}',
  );

  test("a QEMU that answers postcopy-ram, not multifd, within the bound: only postcopy-multifd is left unanswered", async () => {
    const dir = qemuDir("silent-multifd", `${answers('{"return": {}}', '{"return": {}}')}\nsleep 10`);
    const asked = (require: Capability[]) =>
      probe(sys, facts, { ...opts, qemu: `${dir}/qemu-system-x86_64`, qemuMs: 500, require });
    const plain = await asked(["postcopy-ram"]);
    expect([plain.postcopy, plain.error, plain.qemu?.accepts, plain.qemu?.multifd]).toEqual([
      true,
      undefined,
      true,
      { accepts: null, message: "no answer within 500 ms: killed" },
    ]);
    const multifd = await asked(["postcopy-multifd"]);
    expect([multifd.postcopy, multifd.required.ok, multifd.error]).toEqual([
      null,
      null,
      "could not answer what was asked: --qemu: QEMU 7.2.0 did not answer multifd beside postcopy-ram (no answer within 500 ms: killed)",
    ]);
  });

  test.skipIf(!realQemu || !isRoot)("as root QEMU accepts postcopy-ram and the probe agrees", () => {
    const { code, report } = cli(["--json", "--qemu"]);
    expect(code).toBe(0);
    expect(report.qemu).toMatchObject({ path: realQemu, accepts: true, message: "", agrees: true });
    expect(check(report, "qemu")).toMatchObject({
      status: "pass",
      detail: `QEMU ${report.qemu!.version} accepts postcopy-ram, as the probe says`,
    });
  });

  test.skipIf(!realQemu || !isRoot)(
    "target-page-size: the guest's pages, which the QEMU asked has not got, keep the probe's no against its yes",
    () => {
      const { code, report } = cli(["--json", "--qemu", "--target-page-size", "65536"]);
      const [page, blocking] = [`host ${sys.pageSize()}, target 65536`, causes(report)];
      expect([code, report.postcopy, report.answeredBy, report.qemu?.accepts, blocking]).toEqual([
        1,
        false,
        undefined,
        true,
        ["target-page-size"],
      ]);
      const unasked = `page-size fails (${page}), which the QEMU asked does not reproduce`;
      expect(report.qemu!.why).toBe(`${unasked}: the probe's no stands`);
      const human = renderHuman(report, { quiet: true, color: false });
      const line = `Postcopy live migration (QEMU ${report.qemu!.version} postcopy-ram): NOT SUPPORTED for root (uid 0)`;
      expect(human).toContain(`${line}\n`);
      const none = `none on ${facts.arch}, whose pages are always ${sys.pageSize()} B: migrate this guest without postcopy`;
      expect(human).toContain(`    $ ${none}\n`);
    },
  );

  test("qemuAnswer(): what stands keeps only the probe's no; where the probe says yes and QEMU no, QEMU decides", () => {
    const answer = { version: "7.2.0", accepts: false, message: "Postcopy is not supported", multifd: null };
    const qemu = { path: "/usr/bin/qemu-system-x86_64", version: "7.2.0", ptrace: false, answer } as Qemu;
    const stands = "page-size fails (host 4096, target 65536), which the QEMU asked does not reproduce";
    expect(qemuAnswer(qemu, true, stands).json.qemu?.why).toBe(
      "the reason is not known to the probe: QEMU's answer decides",
    );
    const accepting = { ...qemu, answer: { ...answer, accepts: true, message: "" } } as Qemu;
    expect(qemuAnswer(accepting, false, stands).json.qemu?.why).toBe(`${stands}: the probe's no stands`);
  });

  test.skipIf(!realQemu || !isRoot)("multifd beside postcopy-ram: taken before 8.1, refused from 8.1 to 10.0", () => {
    for (const q of [realQemu!, ...(qemu10 ? [qemu10] : [])]) {
      const answer = askQemu(sys, q, 5000);
      if (typeof answer === "string") throw new Error(answer);
      const [major, minor] = answer.version.split(".").map(Number);
      const refuses = (major === 8 && minor >= 1) || major === 9 || (major === 10 && minor === 0);
      const message = refuses ? "Postcopy is not yet compatible with multifd" : "";
      expect([answer.version, answer.multifd]).toEqual([answer.version, { accepts: !refuses, message }]);
    }
  });

  test.skipIf(!realQemu || !isRoot || unprivileged !== "0")(
    "as uid 65534 QEMU rejects postcopy-ram and the probe agrees",
    () => {
      const { code, report } = cli(["--json", "--qemu"], { nobody: true });
      expect(code).toBe(1);
      expect(report.qemu).toMatchObject({ accepts: false, agrees: true });
      expect(report.qemu!.message).toStartWith("Postcopy is not supported");
    },
  );

  test.skipIf(!realQemu || !isRoot)(
    "unprivileged-userfaultfd: setcap names the file a QEMU's path resolves to, never a link a tenant could change",
    () => {
      // A directory of uid 65534's with a link to /usr/bin in it: the link could point elsewhere by paste time.
      const dir = `${world}/tenant-${Math.random().toString(36).slice(2)}`;
      mkdirSync(dir, { mode: 0o755 });
      chownSync(dir, 65534, 65534);
      symlinkSync(dirname(realpathSync(realQemu!)), `${dir}/bin`);
      const real = realpathSync(realQemu!);
      const qemu = identify(sys, facts, { ...opts, qemu: `${dir}/bin/${basename(real)}`, qemuMs: 5000 });
      const seen = { f: { ...facts, tools: ["setcap"], apparmor: null, noNewPrivs: false }, qemu } as unknown as Seen;
      expect([qemu.path, qemu.grantable, setcap(seen)]).toEqual([
        `${dir}/bin/${basename(real)}`,
        real,
        [`setcap cap_sys_ptrace+ep ${real}   # broad: also lets QEMU ptrace`],
      ]);
      rmSync(dir, { recursive: true });
    },
  );

  test.skipIf(!realQemu || !isRoot || unprivileged !== "0" || !Bun.which("setcap"))(
    "unprivileged-userfaultfd: setcap is offered only where an exec would grant it: not to a script, not under NoNewPrivs",
    () => {
      // A wrapper script of root's in a directory of root's (a tmpfs on /mnt, in a mount namespace of its own).
      const wrap = `mount -t tmpfs -o mode=0755 none /mnt && printf '%s' "$0" > /mnt/qemu && chmod 0755 /mnt/qemu`;
      const script = [
        "/usr/bin/unshare",
        "-m",
        "sh",
        "-c",
        `${wrap} && exec "$@"`,
        `#!/bin/sh\nexec ${realQemu} "$@"\n`,
      ];
      const setcaps = (qemu: string, prefix: string[] = []) => {
        const { code, report } = cli(["--json", "--qemu", qemu], { prefix, nobody: true });
        const fixes = report.diagnosis.flatMap((d) => d.fix);
        return [code, report.qemu?.accepts, fixes.filter((x) => x.startsWith("setcap"))];
      };
      const broad = `setcap cap_sys_ptrace+ep ${realQemu}   # broad: also lets QEMU ptrace`;
      expect(setcaps(realQemu!)).toEqual([1, false, [broad]]);
      expect(setcaps("/mnt/qemu", script)).toEqual([1, false, []]);
      expect(setcaps(realQemu!, ["/usr/bin/setpriv", "--no-new-privs"])).toEqual([1, false, []]);
    },
    30_000,
  );

  test.skipIf(!realQemu || !isRoot)(
    "under a seccomp filter QEMU 7.2 refuses, and the probe, knowing its version, agrees",
    () => {
      const { code, report } = underSeccomp("EPERM", ["--json", "--qemu"]);
      const major = Number(report.qemu!.version.split(".")[0]);
      expect([code, report.postcopy, report.qemu!.agrees]).toEqual([major >= 8 ? 0 : 1, major >= 8, true]);
    },
  );

  test.skipIf(!isRoot)(
    "a QEMU that rejects what the probe accepts decides: verdict, JSON, Prometheus and exit status",
    () => {
      const dir = qemuDir(
        "rejects",
        `echo 'postcopy_ram_supported_by_host: userfaultfd not available: Operation not permitted' >&2\n${REJECTS}`,
      );
      const { code, report } = cli(["--json", "--qemu"], { path: pathWith(dir) });
      expect(code).toBe(1);
      expect([report.postcopy, report.probe.postcopy, report.required.ok]).toEqual([false, true, false]);
      expect(report.qemu).toEqual({
        path: `${dir}/qemu-system-x86_64`,
        version: "7.2.0",
        accepts: false,
        agrees: false,
        message:
          "Postcopy is not supported: postcopy_ram_supported_by_host: userfaultfd not available: Operation not permitted",
        multifd: null,
        why: "the reason is not known to the probe: QEMU's answer decides",
      });
      const human = renderHuman(report, { quiet: true, color: false });
      expect(human).toContain("Postcopy live migration (QEMU 7.2.0's own answer): NOT SUPPORTED for root (uid 0)\n");
      expect(human).toContain("The probe's own answer: SUPPORTED; QEMU 7.2.0's own answer disagrees, and decides\n");
      const metrics = renderPrometheus(report);
      expect(metrics).toContain("\npostcopy_probe_supported 0\n");
      expect(metrics).toContain("\npostcopy_probe_probe_supported 1\n");
    },
  );

  const HOSTILE: Array<[string, string, string]> = [
    ["a bare number", "echo 5", "no QMP greeting with a version: 5"],
    ["null", "echo null", "no QMP greeting with a version: null"],
    ["a greeting that is not an object", `echo '{"QMP": 1}'`, "no QMP greeting with a version"],
    ["a greeting without a version", `echo '{"QMP": {"capabilities": []}}'`, "no QMP greeting with a version"],
    ["text that is not JSON", "printf 'hello\\033[31m\\r\\nworld\\n'", "no QMP greeting with a version: hello [31m"],
    ["a greeting and nothing more", GREETING, "no QMP answer to migrate-set-capabilities"],
    ["megabytes on stdout", "yes x | head -c 5000000", "more than 65536 bytes of output and no answer: killed"],
    ["megabytes on stderr", "yes x | head -c 5000000 >&2", "more than 65536 bytes of output and no answer: killed"],
  ];
  test.each(HOSTILE)(
    "a QEMU printing %s fails the check with a short, clean reason and exit 2",
    (name, body, reason) => {
      const dir = qemuDir(`hostile-${name.replace(/\W+/g, "-")}`, body);
      const { code, report, stderr } = cli(["--json", "--qemu", `${dir}/qemu-system-x86_64`]);
      expect(code).toBe(2);
      expect(check(report, "qemu")).toMatchObject({ status: "fail", detail: `${dir}/qemu-system-x86_64: ${reason}` });
      expect(check(report, "qemu").detail).not.toMatch(/\p{Cc}/u);
      expect(report.error).toStartWith("could not answer what was asked: --qemu: ");
      expect(stderr).toStartWith("postcopy-probe: could not answer what was asked: --qemu: ");
    },
  );

  test("the exchange is complete with migrate-set-capabilities' reply: quit's is not awaited, the group is killed", () => {
    const marker = `${3000 + (process.pid % 1000)}.25`;
    // No reply to quit, and a grandchild that holds the pipe open: the answer counts at once.
    const rejects = answers(
      '{"return": {}}',
      '{"error": {"class": "GenericError", "desc": "Postcopy is not supported"}}',
    );
    const dir = qemuDir("grandchild", `(sleep ${marker} &)\n${rejects}\nexec sleep ${marker}`);
    const start = Date.now();
    const answer = askQemu(sys, `${dir}/qemu-system-x86_64`, 5000);
    expect(Date.now() - start).toBeLessThan(4000);
    expect(answer).toMatchObject({ version: "7.2.0", accepts: false, message: "Postcopy is not supported" });
    Bun.sleepSync(100);
    const left = pids().filter((p) => cmdlineOf(p).includes(marker));
    expect(left).toEqual([]);
  });

  test("a QEMU that does not answer is killed within the bound, and the run cannot say yes", () => {
    const dir = qemuDir("silent", `${GREETING}\nexec sleep 30`);
    const start = Date.now();
    const answer = askQemu(sys, `${dir}/qemu-system-x86_64`, 300);
    expect([answer, Date.now() - start < 3000]).toEqual(["no answer within 300 ms: killed", true]);
  });

  test("no QEMU found with --qemu is exit 2 with the places looked at", () => {
    const { code, report } = cli(["--json", "--qemu"], { path: NO_QEMU });
    expect(code).toBe(2);
    expect(report.error).toMatch(
      /^could not answer what was asked: --qemu: no QEMU found: looked for qemu-system-x86_64 on \$PATH, /,
    );
  });

  test("without --qemu there is no qemu check and nothing is spawned", async () => {
    expect((await probe(sys, facts, opts)).checks.map((c) => c.id)).not.toContain("qemu");
  });

  test("poll() on two fds says which one is ready", () => {
    const [a, b] = [pipe(), pipe()];
    sys.write(b.ends[1], "x");
    const r = poll(a.ends[0], 0, b.ends[0]);
    for (const fd of [...a.ends, ...b.ends]) sys.close(fd);
    expect([r.ret, r.revents]).toEqual([1, [0, K.POLLIN]]);
  });
});
