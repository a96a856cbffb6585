/** Tests of bench.ts: --bench. */

import { describe, expect, test } from "bun:test";
import { existsSync, readFileSync } from "node:fs";
import { cli, cmdlineOf, facts, isRoot, pids, world } from "./helpers.ts";

describe("--bench (bench.ts)", () => {
  test.skipIf(!isRoot)(
    "--bench 120000 keeps every buffer the kernel copies from alive, and says which route it measured",
    () => {
      // Before the buffers were held, the collector freed them under UFFDIO_COPY after ~55 000 faults.
      const { code, report } = cli(["--bench", "120000", "--json"]);
      expect(code).toBe(0);
      const base = [report.bench].flat()[0] as Record<string, unknown>;
      expect(Object.keys(base)).toEqual([
        "faults",
        "pageSize",
        "route",
        "p50Ns",
        "p99Ns",
        "pagesPerSec",
        "bytesPerSec",
      ]);
      expect([base.faults, base.pageSize, base.route]).toEqual([120000, facts.pageSize, "device"]);
      expect(base.p99Ns as number).toBeGreaterThanOrEqual(base.p50Ns as number);
      expect(base.bytesPerSec).toBe((base.pagesPerSec as number) * facts.pageSize);
    },
    60000,
  );

  test.skipIf(!isRoot)("--bench -q still prints the benchmark line", () => {
    const run = cli(["--bench", "2000", "-q"]);
    expect(run.stdout).toMatch(
      /\nBenchmark \(2000 faults on 4096 B pages, device\): p50 [\d.]+ µs, p99 [\d.]+ µs, \d+ pages\/s/,
    );
  });

  test.skipIf(!isRoot)("a --bench progress line on a terminal is erased when a signal ends the run", async () => {
    const out = `${world}/typescript`;
    const cmd = `${world}/bun ${world}/probe.ts --bench 500000 -q`;
    const pty = Bun.spawn(["/usr/bin/script", "-qfec", cmd, out], { stdio: ["ignore", "ignore", "ignore"] });
    let child = 0;
    for (let i = 0; i < 100 && !child; i++) {
      await Bun.sleep(50);
      const text = existsSync(out) ? readFileSync(out, "latin1") : "";
      if (!text.includes("bench: ")) continue;
      child = Number(pids().find((p) => cmdlineOf(p).includes("--bench\x00500000")));
    }
    process.kill(child, "SIGINT");
    await pty.exited;
    const text = readFileSync(out, "latin1");
    expect(text).toMatch(new RegExp(`bench: \\d+/500000 faults\r${"\x1b"}\\[K`));
    expect(text).toContain('COMMAND_EXIT_CODE="130"');
  });
});
