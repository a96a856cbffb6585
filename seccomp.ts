/**
 * A running process's seccomp filters, read and run. --pid reads them as CRIU dumps them: it seizes the
 * process's main thread (PTRACE_SEIZE), stops it for a few milliseconds (PTRACE_INTERRUPT and a bounded
 * wait), copies each classic-BPF program (PTRACE_SECCOMP_GET_FILTER, one index at a time until the
 * kernel says there is none) and lets go (PTRACE_DETACH, on every path). A small interpreter then runs
 * the programs over struct seccomp_data for each system call a route to a uffd makes, with the
 * arguments QEMU makes it with, and combines them as the kernel does: the most restrictive action wins.
 * context.ts loads this file only for --pid of a process that has filters.
 *
 * ```ts
 * import { readFilters, verdicts } from "./seccomp.ts";
 * const read = readFilters(pid); // { filters: [[{ code, jt, jf, k }, ...], ...] } or { error }
 * ```
 */

import * as K from "./ffi.ts";
import type { FilterVerdict, Insn, Route } from "./types.ts";

// include/uapi/linux/ptrace.h, asm-generic/errno.h; wait.h: __WALL and WNOHANG
const [PTRACE_DETACH, PTRACE_SEIZE, PTRACE_INTERRUPT, PTRACE_SECCOMP_GET_FILTER] = [17, 0x4206, 0x4207, 0x420c];
const [__WALL, WNOHANG] = [0x40000000, 1];
// include/uapi/linux/seccomp.h: the actions, from the most restrictive; a filter's value is action | data.
const ACTIONS = {
  SECCOMP_RET_KILL_PROCESS: 0x80000000,
  SECCOMP_RET_KILL_THREAD: 0x00000000,
  SECCOMP_RET_TRAP: 0x00030000,
  SECCOMP_RET_ERRNO: 0x00050000,
  SECCOMP_RET_USER_NOTIF: 0x7fc00000,
  SECCOMP_RET_TRACE: 0x7ff00000,
  SECCOMP_RET_LOG: 0x7ffc0000,
  SECCOMP_RET_ALLOW: 0x7fff0000,
};
const [SECCOMP_RET_ACTION_FULL, SECCOMP_RET_DATA] = [0xffff0000, 0x0000ffff];
// include/uapi/linux/filter.h and bpf_common.h: instruction classes, sizes, modes, ops and sources.
const [BPF_LD, BPF_LDX, BPF_ST, BPF_STX, BPF_ALU, BPF_JMP, BPF_RET, BPF_MISC] = [0, 1, 2, 3, 4, 5, 6, 7];
const [BPF_W, BPF_IMM, BPF_ABS, BPF_MEM, BPF_LEN, BPF_X, BPF_A, BPF_TXA] = [0, 0, 0x20, 0x60, 0x80, 0x08, 0x10, 0x80];
const BPF_DIV = 0x30;
/** struct seccomp_data: int nr, __u32 arch, __u64 instruction_pointer, __u64 args[6]: 64 bytes. */
const SECCOMP_DATA_SIZE = 64;
/** The kernel's limit on a filter's length (BPF_MAXINSNS). */
const BPF_MAXINSNS = 4096;

/** The system calls QEMU makes for postcopy, per architecture; AUDIT_ARCH_* (linux/audit.h) for seccomp_data.arch. */
type Numbers = Record<"userfaultfd" | "openat" | "ioctl" | "mmap" | "munmap" | "madvise", number> &
  Record<"munlockall" | "eventfd2" | "fallocate", number> & { arch: number };
// asm-generic/unistd.h numbers for the architectures that use it.
const GENERIC = { userfaultfd: 282, openat: 56, ioctl: 29, mmap: 222, munmap: 215, madvise: 233 };
const GENERIC_MORE = { munlockall: 231, eventfd2: 19, fallocate: 47 };
const NR: Record<string, Numbers> = {
  x86_64: {
    ...{ arch: 0xc000003e, userfaultfd: 323, openat: 257, ioctl: 16, mmap: 9, munmap: 11, madvise: 28 },
    ...{ munlockall: 152, eventfd2: 290, fallocate: 285 },
  },
  aarch64: { arch: 0xc00000b7, ...GENERIC, ...GENERIC_MORE },
  riscv64: { arch: 0xc00000f3, ...GENERIC, ...GENERIC_MORE },
  loongarch64: { arch: 0xc0000102, ...GENERIC, ...GENERIC_MORE },
};
// mman-common.h, fcntl.h (FALLOC_FL_*), eventfd.h; AT_FDCWD and an mmap's fd -1 as the 64-bit registers carry them.
const [MADV_DONTNEED, FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, EFD_CLOEXEC] = [4, 1, 2, K.O_CLOEXEC];
const [AT_FDCWD_ARG, NO_FD] = [0xffffffffffffff9cn, 0xffffffffffffffffn];

const F = K.FFIType;
/** libc calls only this file makes. */
const calls = () =>
  K.openLibc({
    ptrace: { args: [F.i64, F.i32, F.u64, F.ptr], returns: F.i64_fast },
    waitpid: { args: [F.i32, F.ptr, F.i32], returns: F.i32 },
    prctl: { args: [F.i32, F.u64, F.ptr, F.u64, F.u64], returns: F.i32 },
  });
let opened: ReturnType<typeof calls> | null = null;
const libc = () => (opened ??= calls());

/**
 * The seccomp filters of `pid`'s main thread, the first installed first; or why they could not be read
 * (Yama's ptrace_scope, a kernel without CONFIG_CHECKPOINT_RESTORE, a process already traced, one that
 * does not stop within `ms`). The process is let go on every path.
 */
export function readFilters(pid: number, ms = 1000): { filters: Insn[][] } | { error: string } {
  const c = libc();
  const ptrace = (request: number, addr: number, data: Uint8Array | null) =>
    K.answer(Number(c.ptrace(request, pid, addr, data)));
  const failed = (call: string, r: K.R) => ({ error: `${call}: ${K.errnoName(r.errno)}` });
  const seized = ptrace(PTRACE_SEIZE, 0, null);
  if (seized.ret < 0) return failed("PTRACE_SEIZE (a tracer already, or Yama's ptrace_scope)", seized);
  let stopped = false;
  try {
    const interrupted = ptrace(PTRACE_INTERRUPT, 0, null);
    if (interrupted.ret < 0) return failed("PTRACE_INTERRUPT", interrupted);
    const status = new Int32Array(1);
    for (const deadline = Date.now() + ms; !stopped; Bun.sleepSync(1)) {
      const waited = K.answer(c.waitpid(pid, status, __WALL | WNOHANG));
      if (waited.ret < 0) return failed("waitpid", waited);
      stopped = waited.ret === pid;
      if (!stopped && Date.now() > deadline) return { error: `the process did not stop within ${ms} ms` };
    }
    const filters: Insn[][] = [];
    for (let index = 0; ; index++) {
      const count = ptrace(PTRACE_SECCOMP_GET_FILTER, index, null);
      if (count.ret < 0 && count.errno === K.errnoOf("ENOENT") && index > 0) break;
      if (count.ret < 0) return failed("PTRACE_SECCOMP_GET_FILTER (CONFIG_CHECKPOINT_RESTORE?)", count);
      const bytes = new Uint8Array(8 * Math.min(count.ret, BPF_MAXINSNS));
      const copied = ptrace(PTRACE_SECCOMP_GET_FILTER, index, bytes);
      if (copied.ret < 0) return failed("PTRACE_SECCOMP_GET_FILTER", copied);
      filters.unshift(decode(bytes)); // index 0 is the filter installed last
    }
    return { filters };
  } finally {
    // A tracee that never stopped cannot be detached: it is let go when this process exits.
    if (stopped) ptrace(PTRACE_DETACH, 0, null);
  }
}

/** struct sock_filter[] as instructions (host byte order). */
export function decode(bytes: Uint8Array): Insn[] {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  return Array.from({ length: bytes.length / 8 }, (_, i) => ({
    code: view.getUint16(8 * i, true),
    jt: view.getUint8(8 * i + 2),
    jf: view.getUint8(8 * i + 3),
    k: view.getUint32(8 * i + 4, true),
  }));
}

/** A system call as a filter sees it: its number, the architecture, and its six arguments. */
export type Call = { nr: number; arch: number; args: bigint[] };
/** struct seccomp_data for `call`, as the 16 words BPF_LD|BPF_W|BPF_ABS loads (little-endian: low word first). */
function dataOf(call: Call) {
  const words = new Uint32Array(SECCOMP_DATA_SIZE / 4);
  [words[0], words[1]] = [call.nr >>> 0, call.arch >>> 0];
  call.args.forEach((arg, i) => {
    words[4 + 2 * i] = Number(arg & 0xffffffffn);
    words[5 + 2 * i] = Number((arg >> 32n) & 0xffffffffn);
  });
  return words;
}

/**
 * Runs one classic-BPF program as seccomp does (the instructions seccomp_check_filter() accepts) over
 * `call`: its return value, action and data. A program that falls off its end, or loads outside
 * seccomp_data, is one the kernel would not have loaded: it kills, as an unknown action does.
 */
export function run(prog: Insn[], call: Call): number {
  const data = dataOf(call);
  const mem = new Uint32Array(16);
  let [a, x] = [0, 0];
  for (let pc = 0; pc < prog.length; pc++) {
    const { code, jt, jf, k } = prog[pc];
    const src = code & BPF_X ? x : k;
    switch (code & 7) {
      case BPF_LD:
      case BPF_LDX: {
        const mode = code & 0xe0;
        const value =
          mode === BPF_IMM ? k : mode === BPF_MEM ? mem[k & 15] : mode === BPF_LEN ? SECCOMP_DATA_SIZE : null;
        const loaded = mode === BPF_ABS && (code & 0x18) === BPF_W && k % 4 === 0 ? data[k / 4] : value;
        if (loaded === null || loaded === undefined) return ACTIONS.SECCOMP_RET_KILL_PROCESS;
        if ((code & 7) === BPF_LD) a = loaded;
        else x = loaded;
        break;
      }
      case BPF_ST:
        mem[k & 15] = a;
        break;
      case BPF_STX:
        mem[k & 15] = x;
        break;
      case BPF_ALU: {
        if ((code & 0xf0) === BPF_DIV && src === 0) return 0; // the kernel ends the program with 0
        const value = alu(code & 0xf0, a, src);
        if (value === null) return ACTIONS.SECCOMP_RET_KILL_PROCESS; // not an operation seccomp loads
        a = value;
        break;
      }
      case BPF_JMP: {
        const op = code & 0xf0;
        if (op === 0x00)
          pc += k; // BPF_JA
        else pc += test(op, a, src) ? jt : jf;
        break;
      }
      case BPF_RET:
        return ((code & 0x18) === BPF_A ? a : k) >>> 0;
      case BPF_MISC:
        if (code & BPF_TXA) a = x;
        else x = a;
        break;
    }
  }
  return ACTIONS.SECCOMP_RET_KILL_PROCESS;
}
/** BPF_ALU's operations seccomp accepts, unsigned 32-bit (no BPF_MOD: seccomp_check_filter() refuses it). */
function alu(op: number, a: number, v: number) {
  const ops: Record<number, () => number> = {
    0: () => a + v,
    16: () => a - v,
    32: () => Math.imul(a, v),
    48: () => Math.floor((a >>> 0) / (v >>> 0)),
    64: () => a | v,
    80: () => a & v,
    // The kernel shifts by the count's low 5 bits (a BPF_K count of 32 or more is refused at load).
    96: () => a << (v & 31),
    112: () => (a >>> 0) >>> (v & 31),
    128: () => -a,
    160: () => a ^ v,
  };
  return ops[op] ? ops[op]() >>> 0 : null;
}
/** BPF_JMP's tests, on unsigned 32-bit values: JEQ, JGT, JGE, JSET. */
function test(op: number, a: number, v: number) {
  const [ua, uv] = [a >>> 0, v >>> 0];
  return op === 0x10 ? ua === uv : op === 0x20 ? ua > uv : op === 0x30 ? ua >= uv : (ua & uv) !== 0;
}

/**
 * Several filters as the kernel combines them (seccomp_run_filters()): each runs, the last installed
 * first, and the lowest action (as a signed int) wins; of equal ones, the last installed's.
 */
export function combined(filters: Insn[][], call: Call) {
  let best = { value: ACTIONS.SECCOMP_RET_ALLOW, filter: -1 };
  for (let i = filters.length - 1; i >= 0; i--) {
    const value = run(filters[i], call);
    if ((value & SECCOMP_RET_ACTION_FULL) >> 0 < (best.value & SECCOMP_RET_ACTION_FULL) >> 0)
      best = { value, filter: i };
  }
  return best;
}
/** An action as seccomp.h names it, with its errno: `SECCOMP_RET_ERRNO(EPERM)`. */
export function actionName(value: number) {
  const action = (value & SECCOMP_RET_ACTION_FULL) >>> 0;
  const name = Object.entries(ACTIONS).find(([, v]) => v >>> 0 === action)?.[0] ?? "SECCOMP_RET_KILL_PROCESS";
  return action === ACTIONS.SECCOMP_RET_ERRNO ? `${name}(${K.errnoName(value & SECCOMP_RET_DATA)})` : name;
}

/** One call QEMU makes: how the report names it, its number's name, its arguments; `late` once postcopy starts. */
type Step = { name: string; nr: keyof Numbers; args: Array<number | bigint>; late?: boolean };

/**
 * The calls QEMU makes on a route to a uffd, in order and with its arguments (migration/postcopy-ram.c, the same in
 * 7.2 and 8.0+ but for how the uffd is made): its host check, postcopy_ram_supported_by_host(), when postcopy-ram
 * is set (a uffd with O_CLOEXEC, a throw-away one for receive_ufd_features(), UFFDIO_API, munlockall(), a test
 * page mapped, registered, unregistered, unmapped); then what it makes once the migration starts and postcopy
 * listens (its RAM discarded, a uffd with O_CLOEXEC|O_NONBLOCK, UFFDIO_API, an eventfd, each block registered,
 * its temporary pages mapped, faults served), where a refusal fails the migration after precopy.
 */
function qemuSteps(open: (flags: number) => Step[], page: number, fileBacked: boolean): Step[] {
  const ioctl = (name: string, request: bigint, late?: boolean): Step => ({
    ...{ name: `ioctl(${name})`, nr: "ioctl", args: [3, request, 0] },
    late,
  });
  const anonymous = [0, page, K.PROT_READ | K.PROT_WRITE, K.MAP_PRIVATE | K.MAP_ANONYMOUS, NO_FD, 0];
  const late = (step: Step): Step => ({ ...step, late: true });
  return [
    ...open(K.O_CLOEXEC),
    ...open(K.O_CLOEXEC),
    ioctl("UFFDIO_API", K.UFFDIO_API),
    { name: "munlockall()", nr: "munlockall", args: [] },
    { name: "mmap(MAP_PRIVATE|MAP_ANONYMOUS)", nr: "mmap", args: anonymous },
    ioctl("UFFDIO_REGISTER", K.UFFDIO_REGISTER),
    ioctl("UFFDIO_UNREGISTER", K.UFFDIO_UNREGISTER),
    { name: "munmap()", nr: "munmap", args: [0, page] },
    late({ name: "madvise(MADV_DONTNEED)", nr: "madvise", args: [0, page, MADV_DONTNEED] }),
    ...(fileBacked ? [late({ name: "fallocate(PUNCH_HOLE)", nr: "fallocate", args: [3, PUNCH_HOLE, 0, page] })] : []),
    ...open(K.O_CLOEXEC | K.O_NONBLOCK).map(late),
    ioctl("UFFDIO_API", K.UFFDIO_API, true),
    late({ name: "eventfd2(EFD_CLOEXEC)", nr: "eventfd2", args: [0, EFD_CLOEXEC] }),
    ioctl("UFFDIO_REGISTER", K.UFFDIO_REGISTER, true),
    late({ name: "mmap(MAP_PRIVATE|MAP_ANONYMOUS)", nr: "mmap", args: anonymous }),
    ...[K.UFFDIO_COPY, K.UFFDIO_ZEROPAGE, K.UFFDIO_WAKE].map((r) => ioctl(ioctlName(r), r, true)),
  ];
}
const PUNCH_HOLE = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE;
/** How a uffd is made with `flags` on each route: what QEMU 8.0+ calls on the device, and userfaultfd(2). */
const OPENS: Record<Route, (flags: number) => Step[]> = {
  device: (flags) => [
    { name: `ioctl(USERFAULTFD_IOC_NEW, ${flagNames(flags)})`, nr: "ioctl", args: [3, K.USERFAULTFD_IOC_NEW, flags] },
  ],
  syscall: (flags) => [{ name: `userfaultfd(${flagNames(flags)})`, nr: "userfaultfd", args: [flags] }],
  // The probe's own diagnostic: a user-mode-only uffd, which QEMU never asks for.
  "user-mode-only": (flags) => [
    { name: "userfaultfd(UFFD_USER_MODE_ONLY)", nr: "userfaultfd", args: [flags | K.UFFD_USER_MODE_ONLY] },
  ],
};
const flagNames = (flags: number) => (flags & K.O_NONBLOCK ? "O_CLOEXEC|O_NONBLOCK" : "O_CLOEXEC");

/**
 * The filters' answers for the calls QEMU makes on each route (the device's node opened first, as QEMU 8.0+ opens it,
 * once): the first call a filter does not let through decides the route. `fileBacked`: the VM's RAM has a file behind
 * it (a mem-path, a memfd, share=on), which QEMU discards with fallocate(). null when this architecture's numbers are
 * not known.
 */
export function verdicts(
  filters: Insn[][],
  archName: string,
  pageSize: number,
  fileBacked = false,
): FilterVerdict | null {
  const nr = NR[archName];
  if (!nr) return null;
  const call = (step: Step): Call => ({
    nr: nr[step.nr],
    arch: nr.arch,
    args: [...step.args.map(BigInt), 0n, 0n, 0n, 0n, 0n, 0n].slice(0, 6),
  });
  const node: Step = {
    name: `openat(${DEVICE_PATH}, O_RDWR|O_CLOEXEC)`,
    nr: "openat",
    args: [AT_FDCWD_ARG, 0, K.O_RDWR | K.O_CLOEXEC],
  };
  const routes: Record<Route | "device-node", Step[]> = {
    "device-node": [node],
    device: qemuSteps(OPENS.device, pageSize, fileBacked),
    syscall: qemuSteps(OPENS.syscall, pageSize, fileBacked),
    "user-mode-only": OPENS["user-mode-only"](K.O_CLOEXEC),
  };
  const verdict: FilterVerdict = { answers: {}, says: {}, late: [], undecided: [], fix: "" };
  for (const [route, steps] of Object.entries(routes) as Array<[Route | "device-node", Step[]]>) {
    for (const step of steps) {
      const { value, filter } = combined(filters, call(step));
      const action = (value & SECCOMP_RET_ACTION_FULL) >>> 0;
      if (action === ACTIONS.SECCOMP_RET_ALLOW || action === ACTIONS.SECCOMP_RET_LOG) continue;
      const which = `filter ${filter + 1} of ${filters.length}, ${filters[filter].length} instructions`;
      const when = step.late ? " (when postcopy starts, after precopy)" : "";
      verdict.says[route] = `${step.name}: ${actionName(value)}, ${which}${when}`;
      // The node's open() handed to a supervisor or a tracer: the device's route is theirs to decide.
      const on = route === "device-node" ? "device" : route;
      if (action === ACTIONS.SECCOMP_RET_USER_NOTIF || action === ACTIONS.SECCOMP_RET_TRACE) {
        if (!verdict.undecided.includes(on)) verdict.undecided.push(on);
      } else {
        verdict.answers[route] =
          action === ACTIONS.SECCOMP_RET_ERRNO ? K.errnoName(value & SECCOMP_RET_DATA) : "SIGSYS";
        if (step.late && route !== "device-node") verdict.late.push(route);
      }
      break;
    }
  }
  // The node's open() refused is the device's route refused (and only then: no route is set to nothing).
  if (verdict.answers["device-node"]) {
    verdict.answers.device = verdict.answers["device-node"];
    verdict.says.device = verdict.says["device-node"];
    verdict.late = verdict.late.filter((r) => r !== "device");
  }
  const names = [...new Set(Object.values(verdict.says).map((said) => said!.split("(")[0]))];
  const rule = JSON.stringify({ names, action: "SCMP_ACT_ALLOW" });
  const allowing = "# its profile, allowing what QEMU calls";
  verdict.fix = `jq '.syscalls += [${rule}]' PROFILE.json > PROFILE-postcopy.json   ${allowing}`;
  return verdict;
}
const DEVICE_PATH = "/dev/userfaultfd";
const ioctlName = (request: bigint) =>
  request === K.USERFAULTFD_IOC_NEW
    ? "USERFAULTFD_IOC_NEW"
    : `UFFDIO_${Object.entries(K._UFFDIO).find(([, nr]) => BigInt(nr) === (request & 0xffn))?.[0]}`;

// --pid reads the filters from a worker thread that runs this file: the kernel lets a tracee go when its tracer
// thread ends, stopped or not, so a process that did not stop within the bound is let go with the thread.
declare const self: Worker;
if (!Bun.isMainThread)
  self.onmessage = ({ data }: MessageEvent<{ pid: number; ms: number }>) => {
    K.loadSys(); // errno, for this thread's calls
    postMessage(readFilters(data.pid, data.ms));
  };
