/**
 * --bench: how fast this host serves userfaultfd faults. One native thread runs strlen across N
 * registered pages of anonymous memory, each missing, and the main thread serves every fault with
 * UFFDIO_COPY as fast as it can, on the route the checks used. probe.ts's main() loads this file only
 * for --bench, after the probe itself.
 *
 * ```ts
 * import { bench } from "./bench.ts";
 * const figures = await bench(sys, facts, report, opts); // { faults, p50Ns, p99Ns, pagesPerSec, ... }
 * ```
 */
import type { Sys } from "./ffi.ts";
import * as K from "./ffi.ts";
import { ROUTES, serveFaults } from "./shared.ts";
import type { Bench, Facts, Options, Progress, Report } from "./types.ts";

const NS_PER_US = 1000;

/** --bench on base pages, with a progress line on a terminal (stderr) that goes when it ends, however it ends. */
export async function bench(sys: Sys, facts: Facts, report: Report, opts: Options) {
  const progress = sys.isatty(2) ? progressLine(sys, opts.bench) : undefined;
  try {
    return await served(sys, facts, report, opts, progress?.show);
  } finally {
    progress?.erase();
  }
}
/**
 * `opts.bench` faults served at full speed, timed. The hot loop allocates nothing but the Sys's answers:
 * the copy struct and the time table are made once. An error names what stopped it.
 */
async function served(sys: Sys, facts: Facts, report: Report, opts: Options, progress?: Progress) {
  const routes = report.checks.find((c) => c.id === "uffd-open")?.routes;
  const route = ROUTES.find((r) => routes?.[r] === "ok");
  if (!route) return { error: "no userfaultfd could be opened" };
  const { pageSize } = facts;
  const faults = opts.bench;
  const len = faults * pageSize;
  // The kernel copies from `fill` and `last` on every fault: `serve` holds them until the last one.
  const fill = new Uint8Array(pageSize).fill(0x50);
  const last = new Uint8Array(pageSize).fill(0x50);
  last[pageSize - 1] = 0; // strlen stops at the very end of the last page
  const copy = new BigUint64Array([0n, 0n, BigInt(pageSize), 0n, 0n]);
  const mask = ~BigInt(pageSize - 1);
  let [lastPage, start] = [0n, 0];
  const prepare = (_: number, area: number) => {
    [lastPage, start] = [BigInt(area + len - pageSize), Bun.nanoseconds()];
    return null;
  };
  const serve = (fd: number, msg: BigUint64Array) => {
    copy[0] = msg[2] & mask;
    copy[1] = BigInt(K.addressOf(copy[0] === lastPage ? last : fill));
    const c = sys.ioctl(fd, K.UFFDIO_COPY, copy);
    return c.ret < 0 ? `UFFDIO_COPY: ${K.errnoName(c.errno)}` : null;
  };
  const finish = (ret: number, _: number, served: Float64Array) => {
    // The join reads 32 bits of strlen's size_t: compare those.
    if (ret !== Number(BigInt.asIntN(32, BigInt(len - 1)))) return `strlen returned ${ret}, not ${len - 1}`;
    // Each fault's time is the gap between two served faults; the first also holds the thread's start.
    const gaps = served.subarray(1).map((t, i) => t - served[i]);
    gaps.sort();
    const at = (q: number) => Math.round(gaps[Math.min(gaps.length - 1, Math.floor(gaps.length * q))]);
    const pagesPerSec = Math.round(faults / ((served[faults - 1] - start) / 1e9));
    return {
      faults,
      pageSize,
      route,
      p50Ns: at(0.5),
      p99Ns: at(0.99),
      pagesPerSec,
      bytesPerSec: pagesPerSec * pageSize,
    };
  };
  const faulting = { kind: "anon" as const, len, mode: K.UFFDIO_REGISTER_MODE_MISSING, fn: "strlen", count: faults };
  const measured = await serveFaults(
    sys,
    facts,
    route,
    opts.boundMs,
    { ...faulting, prepare, serve, finish },
    progress,
  );
  return typeof measured === "string" ? { error: measured } : measured;
}

const us = (ns: number) => `${(ns / NS_PER_US).toFixed(1)} µs`;
/** The benchmark's line in the human report. */
export function benchLine(b: Bench) {
  if ("error" in b) return `Benchmark: could not run (${b.error})`;
  const rate = `${b.pagesPerSec} pages/s, ${((b.pagesPerSec * b.pageSize) / 2 ** 20).toFixed(0)} MiB/s`;
  const on = `${b.faults} faults on ${b.pageSize} B pages, ${b.route}`;
  return `Benchmark (${on}): p50 ${us(b.p50Ns)}, p99 ${us(b.p99Ns)}, ${rate}`;
}

/** A progress line on a terminal that goes away on every way out, signals included. */
function progressLine(sys: Sys, total: number) {
  const erase = () => sys.write(2, "\r\x1b[K");
  const signals = { SIGINT: 2, SIGTERM: 15, SIGHUP: 1 } as const;
  for (const [signal, n] of Object.entries(signals)) {
    process.on(signal, () => {
      erase();
      process.exit(128 + n);
    });
  }
  // The await lets the event loop run the signal handlers above during a long --bench.
  const show = async (n: number) => {
    sys.write(2, `\rbench: ${n}/${total} faults`);
    await Bun.sleep(0);
  };
  return { show, erase };
}
