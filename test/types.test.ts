/**
 * types.ts declares the stages' records and the postcopy-probe/1 document; postcopy-probe-1.schema.json is that
 * document for consumers of --json. Real documents of every kind are validated against the shipped schema.
 */

import { describe, expect, test } from "bun:test";
import { CAUSES } from "../diagnosis.ts";
import { CAUSES as PID_CAUSES } from "../pid.ts";
import { CAUSES as QEMU_CAUSES } from "../qemu.ts";
import { CAUSES as SELINUX_CAUSES } from "../selinux.ts";
import { CAPABILITIES, CONSUMERS } from "../shared.ts";
import { CAUSES as VM_CAUSES } from "../vm.ts";
import { cli, complaints, isRoot, pathWith, QEMU7, realQemu, schema, shipped, withQemu } from "./helpers.ts";

describe("postcopy-probe-1.schema.json: the document --json prints, for consumers to validate", () => {
  test("is shipped in the package, and names exactly the capabilities, consumers and causes the probe has", () => {
    expect(shipped).toContain("postcopy-probe-1.schema.json");
    expect(schema.$defs.capability.enum).toEqual([...CAPABILITIES]);
    expect(schema.$defs.consumer.enum).toEqual(Object.keys(CONSUMERS));
    const more = { ...QEMU_CAUSES, ...PID_CAUSES, ...VM_CAUSES, ...SELINUX_CAUSES };
    const causes = [...Object.keys(CAUSES), ...Object.keys(more)];
    expect(schema.$defs.cause.enum.toSorted()).toEqual([...new Set(causes)].toSorted());
  });

  test("holds a root run, another uid's run with its diagnosis, and a --bench run", () => {
    const runs = [
      cli(["--json"], { path: pathWith(QEMU7) }),
      cli(["--json"], { nobody: true, path: pathWith(QEMU7) }),
      cli(["--json", "--bench", "2000"]),
    ];
    // Each kind really is what it is meant to be: a yes, a no with causes, a benchmark.
    expect(runs.map((r) => r.code)).toEqual([0, 1, 0]);
    expect([runs[1].report.diagnosis.length > 0, runs[2].report.bench && "p50Ns" in runs[2].report.bench]).toEqual([
      true,
      true,
    ]);
    expect(runs.map((r) => complaints(r.report))).toEqual([[], [], []]);
  });

  test.skipIf(!realQemu)("holds --qemu's answer, with a QEMU cause (7.2 and postcopy-multifd)", () => {
    const { code, report } = cli(["--json", "--qemu", realQemu!, "--require", "postcopy-multifd"]);
    const multifd = report.qemu!.version.startsWith("7.") ? 1 : 0;
    expect([code, report.qemu?.accepts, complaints(report)]).toEqual([multifd, true, []]);
  });

  test("holds an error document: a wrong argument, a process that is not there", () => {
    const runs = [cli(["--json", "--require", "teleport"]), cli(["--json", "--pid", "4194000"])];
    expect(runs.map((r) => [r.code, typeof (r.report as unknown as { error: string }).error])).toEqual([
      [2, "string"],
      [2, "string"],
    ]);
    expect(runs.map((r) => complaints(r.report))).toEqual([[], []]);
  });

  test.skipIf(!isRoot || !realQemu)(
    "holds --pid of a running QEMU and a real --migrate",
    async () => {
      await withQemu(realQemu!, [], [], async (pid) => {
        const byPid = cli(["--json", "--pid", String(pid)]);
        expect([byPid.code, byPid.report.context !== undefined, complaints(byPid.report)]).toEqual([0, true, []]);
      });
      const migrated = cli(["--json", "--migrate"]);
      expect([migrated.code, migrated.report.migration?.ok, complaints(migrated.report)]).toEqual([0, true, []]);
    },
    60_000,
  );

  test("refuses what is not the document: a yes said as a word, a report without its checks, an unknown cause", () => {
    const report = cli(["--json"], { path: pathWith(QEMU7) }).report;
    const diagnosed = cli(["--json"], { nobody: true, path: pathWith(QEMU7) }).report;
    const wrongCause = { ...diagnosed, diagnosis: [{ ...diagnosed.diagnosis[0], cause: "gremlins" }] };
    const { checks: _, ...unchecked } = report;
    expect(complaints({ ...report, postcopy: "yes" })).toContain("/postcopy must be boolean,null");
    expect(complaints(unchecked)).toContain(" must have required property 'error'");
    expect(complaints(wrongCause)).toContain("/diagnosis/0/cause must be equal to one of the allowed values");
  });
});
