/** Tests of textfile.ts: --format prometheus and --output. */

import { describe, expect, test } from "bun:test";
import { mkdirSync, readdirSync, readFileSync, statSync } from "node:fs";
import { renderJson } from "../probe.ts";
import { CAPABILITIES } from "../shared.ts";
import { renderPrometheus } from "../textfile.ts";
import type { Report } from "../types.ts";
import { cli, inNamespace, isRoot, sample, world } from "./helpers.ts";

describe("--format prometheus and --output (textfile.ts)", () => {
  const report = sample;

  test("renderPrometheus() writes gauges with HELP and TYPE for the textfile collector", () => {
    const withTrip = {
      ...report,
      features: { THREAD_ID: true, MOVE: false, unknown: "0x0" },
      roundTrip: { ok: true, ns: 1500 },
      migration: { ok: false, blocktimeMs: 27, pagesRequested: 812 },
    };
    const help = (name: string, text: string) => [
      `# HELP postcopy_probe_${name} ${text}`,
      `# TYPE postcopy_probe_${name} gauge`,
    ];
    const statuses = (id: string, on: string) =>
      ["pass", "warn", "fail", "skip"].map((s) => `postcopy_probe_check{id="${id}",status="${s}"} ${s === on ? 1 : 0}`);
    expect(renderPrometheus(withTrip as unknown as Report).split("\n")).toEqual([
      ...help("up", "1 when the probe answered what was asked, 0 when it could not."),
      "postcopy_probe_up 1",
      ...help("supported", "1 when QEMU can use postcopy-ram here (with --migrate or --qemu: what they found)."),
      "postcopy_probe_supported 0",
      ...help("probe_supported", "1 when the probe's own checks say the QEMU that will run can."),
      "postcopy_probe_probe_supported 0",
      ...help("capability", "1 when a userfaultfd consumer can work here."),
      ...CAPABILITIES.map((c) => `postcopy_probe_capability{capability="${c}"} ${c === "criu-lazy-pages" ? 1 : 0}`),
      ...help("check", "1 on the status each check has, 0 on the others."),
      ...statuses("page-size", "pass"),
      ...statuses("uffd-open", "fail"),
      ...statuses("uffd-api", "skip"),
      ...help(
        "round_trip_seconds",
        "The kernel-mode write fault round trip, thread start to join, when both faults were served.",
      ),
      "postcopy_probe_round_trip_seconds 0.0000015",
      ...help(
        "migration_ok",
        "1 when --migrate's postcopy migration completed with pages requested, 0 when it failed.",
      ),
      "postcopy_probe_migration_ok 0",
      ...help(
        "migration_blocktime_seconds",
        "The destination's postcopy-blocktime in --migrate: how long its vCPUs waited for pages.",
      ),
      "postcopy_probe_migration_blocktime_seconds 0.027",
      ...help(
        "migration_pages_requested",
        "The pages the destination asked the source for in --migrate (ram.postcopy-requests).",
      ),
      "postcopy_probe_migration_pages_requested 812",
      ...help("info", "The probe's version and the context it answered for."),
      'postcopy_probe_info{version="0.1.0",kernel="6.1.0",user="qemu",uid="107"} 1',
      "",
    ]);
  });

  test("renderJson() escapes what a terminal acts on (DEL, C1, format, line separators), and decodes to the same", () => {
    const path = "/A\u202eB\u2028C\u009bD\u007fE\u001bF\u{e0001}G";
    const text = renderJson({ ...report, checks: [{ ...report.checks[0], detail: path }] } as unknown as Report);
    expect(text).toContain(String.raw`"detail": "/A\u202eB\u2028C\u009bD\u007fE\u001bF\udb40\udc01G"`);
    expect(/[\u007f-\u009f\u2028\u202e]/.test(text)).toBe(false);
    expect(JSON.parse(text).checks[0].detail).toBe(path);
  });

  test("the cause gauges carry what stands in the way of what the exit status stands for, labels escaped", () => {
    const diagnosis = [
      {
        cause: "unprivileged-userfaultfd",
        summary: "",
        blocks: ["postcopy-ram", "criu-lazy-pages"],
        evidence: [],
        fix: [],
      },
      { cause: "criu-needs-ptrace", summary: "", blocks: ["criu-lazy-pages"], evidence: [], fix: [] },
    ];
    const vm = { name: 'db "1"\nx', pid: 42, user: "qemu", qemu: "10.0.0", answer: "not supported" as const };
    const text = renderPrometheus({
      ...report,
      diagnosis,
      vms: [{ ...vm, report: { ...report, diagnosis } }],
    } as Report);
    expect(text.split("\n").filter((l) => /^postcopy_probe_(cause|vm_)/.test(l))).toEqual([
      'postcopy_probe_cause{cause="unprivileged-userfaultfd"} 1',
      'postcopy_probe_vm_up{vm="db \\"1\\"\\nx",pid="42",user="qemu"} 1',
      'postcopy_probe_vm_supported{vm="db \\"1\\"\\nx",pid="42",user="qemu"} 0',
      'postcopy_probe_vm_cause{vm="db \\"1\\"\\nx",pid="42",user="qemu",cause="unprivileged-userfaultfd"} 1',
    ]);
  });

  test("renderPrometheus() gives no round-trip time for a round trip that failed", () => {
    const failed = { ...report, roundTrip: { ok: false, ns: 1500 } } as unknown as Report;
    expect(
      renderPrometheus(failed)
        .split("\n")
        .filter((l) => l.includes("round_trip")),
    ).toEqual([]);
  });

  const promtool = Bun.which("promtool");
  test.skipIf(!promtool || !isRoot)("promtool check metrics accepts a real run's output and an error document", () => {
    for (const args of [
      ["--format", "prometheus"],
      ["--format", "prometheus", "--bogus"],
    ]) {
      const run = cli(args);
      const check = Bun.spawnSync([promtool!, "check", "metrics"], { stdin: new TextEncoder().encode(run.stdout) });
      expect([check.exitCode, check.stdout.toString() + check.stderr.toString()]).toEqual([0, ""]);
    }
  });

  test.skipIf(!isRoot)("--output replaces only a regular file, and a failed write names the write", () => {
    const devNull = cli(["--json", "--output", "/dev/null"]);
    expect([devNull.code, devNull.stderr.split("\n")[0]]).toEqual([
      2,
      'postcopy-probe: Cannot write "/dev/null": it is a character device, not a regular file',
    ]);
    expect(statSync("/dev/null").isCharacterDevice()).toBe(true);
    const fifo = `${world}/output-fifo`;
    Bun.spawnSync(["mkfifo", fifo]);
    const toFifo = cli(["--output", fifo]);
    expect([toFifo.code, toFifo.stderr]).toEqual([
      2,
      `postcopy-probe: Cannot write "${fifo}": it is a FIFO, not a regular file\n`,
    ]);
    const ro = `${world}/read-only`;
    mkdirSync(ro, { recursive: true });
    const prefix = [...inNamespace(`mount -t tmpfs -o ro none ${ro} && exec "$@"`), "sh"];
    const run = cli(["--format", "prometheus", "--output", `${ro}/postcopy.prom`], { prefix });
    expect([run.code, run.stderr.split("\n")[0]]).toEqual([
      2,
      `postcopy-probe: Cannot write "${ro}/postcopy.prom": EROFS`,
    ]);
  });

  test("--output writes the whole document and leaves no temporary file; a failure leaves nothing", () => {
    const dir = `${world}/textfile`;
    mkdirSync(dir);
    const run = cli(["--format", "prometheus", "--output", `${dir}/postcopy.prom`]);
    expect([run.code === 0 || run.code === 1, run.stdout]).toEqual([true, ""]);
    expect(readdirSync(dir)).toEqual(["postcopy.prom"]);
    expect(readFileSync(`${dir}/postcopy.prom`, "utf8")).toStartWith("# HELP postcopy_probe_up ");
    const bad = cli(["--json", "--output", `${world}/no-such-dir/x.json`]);
    expect([bad.code, bad.stdout, bad.stderr.split("\n")[0]]).toEqual([
      2,
      "",
      `postcopy-probe: Cannot write "${world}/no-such-dir/x.json": ENOENT`,
    ]);
  });
});
