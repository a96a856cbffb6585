/**
 * The kernel ABI postcopy-probe speaks, and nothing else: libc through `bun:ffi`, the userfaultfd
 * constants under their names in include/uapi/linux/userfaultfd.h, per-arch syscall numbers, the
 * _IOC encoding, and a `Sys` whose methods return `{ ret, errno }` instead of throwing. The calls only
 * an option makes are declared in that option's file and opened with openLibc().
 *
 * ```ts
 * import { loadSys, UFFD_USER_MODE_ONLY } from "./ffi.ts";
 * const sys = loadSys();
 * const { ret, errno } = sys.userfaultfd(UFFD_USER_MODE_ONLY); // errno is 0 when ret >= 0
 * ```
 */
if (typeof Bun === "undefined") {
  // Node (22.18+ runs .ts files) would die on the bun:ffi import with a stack trace.
  console.error("postcopy-probe needs Bun: with Bun on PATH, run it as a program: ./probe.ts");
  process.exit(2);
}
// Loaded only once the runtime is known to be Bun: the guard above could not run before a static
// import, and a top-level await would keep `bun build --bytecode` from compiling the binary.
const { dlopen, FFIType: T, ptr, read, toArrayBuffer } = require("bun:ffi") as typeof import("bun:ffi");
/** bun:ffi's argument and return types, for the calls an option declares. */
export const FFIType = T;

/** A system call's answer: `ret` as the C function returned it, `errno` set only when it failed. */
export type R = { ret: number; errno: number };
/** A buffer the kernel reads or writes: structs are arrays of u64 (every uffdio_* field is __u64). */
export type Buf = BigUint64Array | Uint8Array | Int32Array;

type Arch = { name: string; nr: number; statx: number; musl: string; ioc?: "ppc"; noreserve?: number };
/** Linux architectures the probe knows, keyed by `process.arch`: __NR_userfaultfd and __NR_statx. */
const ARCH: Record<string, Arch> = {
  x64: { name: "x86_64", nr: 323, statx: 332, musl: "x86_64" },
  ia32: { name: "i386", nr: 374, statx: 383, musl: "i386" },
  arm64: { name: "aarch64", nr: 282, statx: 291, musl: "aarch64" },
  arm: { name: "arm", nr: 388, statx: 397, musl: "armhf" },
  riscv64: { name: "riscv64", nr: 282, statx: 291, musl: "riscv64" },
  loong64: { name: "loongarch64", nr: 282, statx: 291, musl: "loongarch64" },
  ppc64: { name: "ppc64", nr: 364, statx: 383, musl: "powerpc64le", ioc: "ppc", noreserve: 0x40 },
  s390x: { name: "s390x", nr: 355, statx: 379, musl: "s390x" },
};
/** The running architecture's entry, or undefined when the probe does not know its numbers. */
export const arch = ARCH[process.arch];
const archOrX64 = arch ?? ARCH.x64;

// include/uapi/asm-generic/ioctl.h; powerpc (and mips) use 13 size bits and other direction bits.
const PPC = archOrX64.ioc === "ppc";
const IOC = PPC ? { NONE: 1n, WRITE: 4n, READ: 2n, SIZEBITS: 13n } : { NONE: 0n, WRITE: 1n, READ: 2n, SIZEBITS: 14n };
const _IOC = (dir: bigint, type: number, nr: number, size: number) =>
  (dir << (16n + IOC.SIZEBITS)) | (BigInt(size) << 16n) | (BigInt(type) << 8n) | BigInt(nr);
const _IOR = (type: number, nr: number, size: number) => _IOC(IOC.READ, type, nr, size);
const _IOWR = (type: number, nr: number, size: number) => _IOC(IOC.READ | IOC.WRITE, type, nr, size);
/** Names listed in kernel order, numbered from `first`: the headers' own order is the table. */
const numbered = (names: string, first = 0) => names.split(/\s+/).map((name, i) => [name, first + i] as const);

// include/uapi/linux/userfaultfd.h
export const [UFFDIO, UFFD_API, UFFD_USER_MODE_ONLY, UFFD_EVENT_PAGEFAULT] = [0xaa, 0xaan, 1, 0x12n];
export const [UFFD_PAGEFAULT_FLAG_WRITE, UFFD_PAGEFAULT_FLAG_WP] = [1n, 2n];
export const [UFFDIO_REGISTER_MODE_MISSING, UFFDIO_REGISTER_MODE_WP, UFFDIO_WRITEPROTECT_MODE_WP] = [1n, 2n, 1n];
/** The _UFFDIO_* numbers: bit numbers in the `ioctls` masks, and the ioctls' nr. */
export const _UFFDIO: Record<string, number> = {
  ...Object.fromEntries(numbered("REGISTER UNREGISTER WAKE COPY ZEROPAGE MOVE WRITEPROTECT CONTINUE POISON")),
  API: 0x3f,
};
export const UFFDIO_API = _IOWR(UFFDIO, _UFFDIO.API, 24);
export const UFFDIO_REGISTER = _IOWR(UFFDIO, _UFFDIO.REGISTER, 32);
export const UFFDIO_UNREGISTER = _IOR(UFFDIO, _UFFDIO.UNREGISTER, 16);
export const UFFDIO_WAKE = _IOR(UFFDIO, _UFFDIO.WAKE, 16);
export const UFFDIO_COPY = _IOWR(UFFDIO, _UFFDIO.COPY, 40);
export const UFFDIO_ZEROPAGE = _IOWR(UFFDIO, _UFFDIO.ZEROPAGE, 32);
export const UFFDIO_WRITEPROTECT = _IOWR(UFFDIO, _UFFDIO.WRITEPROTECT, 24);
export const USERFAULTFD_IOC_NEW = _IOC(IOC.NONE, UFFDIO, 0x00, 0);
/** UFFD_FEATURE_* bits by name without the prefix, in kernel order: bit i is 1 << i. */
export const UFFD_FEATURE: Record<string, bigint> = Object.fromEntries(
  numbered(
    "PAGEFAULT_FLAG_WP EVENT_FORK EVENT_REMAP EVENT_REMOVE MISSING_HUGETLBFS MISSING_SHMEM EVENT_UNMAP SIGBUS " +
      "THREAD_ID MINOR_HUGETLBFS MINOR_SHMEM EXACT_ADDRESS WP_HUGETLBFS_SHMEM WP_UNPOPULATED POISON WP_ASYNC MOVE",
  ).map(([name, i]) => [name, 1n << BigInt(i)]),
);
// include/uapi/asm-generic/fcntl.h, mman-common.h, mman.h, poll.h (ppc's MAP_NORESERVE differs), stat.h
export const [O_RDONLY, O_WRONLY, O_RDWR, O_NONBLOCK, O_CLOEXEC, O_PATH] = [0, 1, 2, 0x800, 0x80000, 0x200000];
/** O_NOFOLLOW is 0100000 on arm and powerpc, 0400000 elsewhere. */
export const O_NOFOLLOW = ["arm", "arm64", "ppc64"].includes(process.arch) ? 0o100000 : 0o400000;
export const [PROT_READ, PROT_WRITE, MAP_SHARED, MAP_PRIVATE, MAP_ANONYMOUS] = [1, 2, 0x01, 0x02, 0x20];
export const [MAP_NORESERVE, MAP_HUGETLB, MFD_CLOEXEC, POLLIN] = [archOrX64.noreserve ?? 0x4000, 0x40000, 1, 1];
export const MAP_HUGE_SHIFT = 26;
export const [AT_FDCWD, AT_EMPTY_PATH, STATX_BASIC_STATS] = [-100, 0x1000, 0x7ff];
export const [S_IFMT, S_IFREG, S_IFCHR] = [0o170000, 0o100000, 0o020000];
/** struct statx: uid @20, gid @24, mode (u16) @28, ino @32, size @40, rdev @128, dev @136; 256 bytes in all. */
const STATX_SIZE = 256;

// include/uapi/asm-generic/errno-base.h and errno.h, from EPERM (1) on: the same numbers on every
// arch above. A table, not node:os constants: loading node:os costs Bun ~2 ms of start-up.
const ERRNO = Object.fromEntries([
  ...numbered(
    "EPERM ENOENT ESRCH EINTR EIO ENXIO E2BIG ENOEXEC EBADF ECHILD EAGAIN ENOMEM EACCES EFAULT ENOTBLK EBUSY " +
      "EEXIST EXDEV ENODEV ENOTDIR EISDIR EINVAL ENFILE EMFILE ENOTTY ETXTBSY EFBIG ENOSPC ESPIPE EROFS EMLINK " +
      "EPIPE EDOM ERANGE EDEADLK ENAMETOOLONG ENOLCK ENOSYS ENOTEMPTY ELOOP",
    1,
  ),
  ["EOPNOTSUPP", 95],
]);
const ERRNO_NAME = new Map(Object.entries(ERRNO).map(([name, n]) => [n, name]));
/** `EPERM` for 1; `errno 999` for a number the table does not name. */
export const errnoName = (errno: number) => ERRNO_NAME.get(errno) ?? `errno ${errno}`;
/** The errno number for a name such as `EPERM`. */
export const errnoOf = (name: string) => ERRNO[name];

/** The system interface the checks use: one method per libc call, each answering `{ ret, errno }`. */
export type Sys = ReturnType<typeof loadSys>;

/** readText reads a file in chunks, up to READ_MAX: /proc files and /etc/passwd fit; a longer one is unread. */
const READ_CHUNK = 1 << 13;
export const READ_MAX = 1 << 22;
const [cp1252, utf16, utf8] = [new TextDecoder("latin1"), new TextDecoder("utf-16le"), new TextEncoder()];
/**
 * Bytes as the string of their Latin-1 code points, which cstr() turns back into the same bytes.
 * TextDecoder's "latin1" is windows-1252 (0x80-0x9f become other characters): fast when no such byte is there.
 */
export function latin1(bytes: Uint8Array) {
  const text = cp1252.decode(bytes);
  return /[\u0100-\uffff]/.test(text) ? utf16.decode(Uint16Array.from(bytes)) : text;
}

/**
 * libc's file name for the running arch: glibc first, then musl. Bun's dlopen also looks for a name the system has not
 * got (musl has no libc.so.6) in the working directory: main() works in / (a tenant's file is never loaded as root).
 */
const LIBC_NAMES = ["libc.so.6", `libc.musl-${archOrX64.musl}.so.1`, "libc.so"];
const SYMBOLS = {
  syscall: { args: [T.i64, T.i64, T.i64, T.i64, T.i64, T.i64], returns: T.i64_fast },
  open: { args: [T.ptr, T.i32], returns: T.i32 },
  ioctl: { args: [T.i32, T.u64, T.ptr], returns: T.i32 },
  mmap: { args: [T.u64, T.u64, T.i32, T.i32, T.i32, T.i64], returns: T.i64_fast },
  munmap: { args: [T.u64, T.u64], returns: T.i32 },
  close: { args: [T.i32], returns: T.i32 },
  memfd_create: { args: [T.ptr, T.u32], returns: T.i32 },
  ftruncate: { args: [T.i32, T.i64], returns: T.i32 },
  read: { args: [T.i32, T.ptr, T.u64], returns: T.i64_fast },
  poll: { args: [T.ptr, T.u64, T.i32], returns: T.i32 },
  dlsym: { args: [T.ptr, T.ptr], returns: T.ptr },
  pthread_create: { args: [T.ptr, T.ptr, T.ptr, T.u64], returns: T.i32 },
  pthread_join: { args: [T.u64, T.ptr], returns: T.i32 },
  pthread_tryjoin_np: { args: [T.u64, T.ptr], returns: T.i32 },
  getpagesize: { args: [], returns: T.i32 },
  isatty: { args: [T.i32], returns: T.i32 },
  write: { args: [T.i32, T.ptr, T.u64], returns: T.i64_fast },
  __errno_location: { args: [], returns: T.ptr },
} as const;
type Symbols = Parameters<typeof dlopen>[1];

/**
 * Opens libc with `symbols`; throws `Cannot load libc: …` when it does not load. An option's own calls (context.ts,
 * qemu.ts) are declared in its file and opened here when it runs.
 */
export function openLibc<S extends Symbols>(symbols: S) {
  const why: string[] = [];
  for (const name of LIBC_NAMES) {
    try {
      return dlopen(name, symbols).symbols;
    } catch (e) {
      why.push((e as Error).message); // try the next name: musl systems have no libc.so.6
    }
  }
  // bun:ffi compiles its calls: with the JIT off, no library loads at all.
  const jit = why.find((m) => /JIT/.test(m));
  if (jit) throw new Error(`Cannot use bun:ffi: ${jit} (${NO_JIT})`);
  throw new Error(`Cannot load libc: tried ${LIBC_NAMES.join(", ")}`);
}
const NO_JIT = "off by BUN_JSC_useJIT=0, or by an address-space limit such as ulimit -v under about 2 GiB";

/**
 * `{ ret, errno }` for a libc call that returns -1 on failure: errno is read right after the call, and
 * only then (STYLE.md rule 5). Valid once loadSys() ran.
 */
export const answer = (ret: number): R => ({ ret, errno: ret === -1 ? read.i32(errnoAt!, 0) : 0 });
let errnoAt: ReturnType<typeof ptr> | null = null;

/** Buffers whose address a call takes as a number, held until it returns: the GC cannot see the kernel read them. */
const held: Buf[] = [];

/** A NUL-terminated copy of a Latin-1 string (paths, symbol names). Buffer would cost Bun ~10 ms to set up. */
export function cstr(s: string) {
  const bytes = new Uint8Array(s.length + 1);
  for (let i = 0; i < s.length; i++) bytes[i] = s.charCodeAt(i);
  return bytes;
}

/** The real `Sys`, backed by libc. Throws when libc cannot be loaded or the arch is unknown. */
export function loadSys() {
  if (!arch) throw new Error(`Unknown architecture "${process.arch}": no __NR_userfaultfd known`);
  const c = openLibc(SYMBOLS);
  errnoAt = c.__errno_location() as ReturnType<typeof ptr>;
  const pollfd = new Int32Array(2);
  const textBuffer = new Uint8Array(READ_CHUNK);
  const [tid, retval] = [new BigUint64Array(1), new BigUint64Array(1)];
  /** pthread_* return the error, not -1: `ret` is what `value` reads, once there is none. */
  const pthread = (err: number, value: () => number): R => (err ? { ret: -1, errno: err } : { ret: value(), errno: 0 });
  /** What the joined thread returned, as join() says. */
  const returned = () => Number(BigInt.asIntN(32, retval[0]));
  /** statx() of `path` (from `dirfd`; "" with AT_EMPTY_PATH: the fd itself): type and mode, owner, size, rdev. */
  const stat = (path: string, dirfd = AT_FDCWD, flags = 0) => {
    const [name, buf] = [cstr(path), new Uint8Array(STATX_SIZE)];
    // syscall() takes the addresses as numbers: `held` keeps both buffers alive until it returns.
    held.push(name, buf);
    const at = answer(c.syscall(arch.statx, dirfd, ptr(name), flags, STATX_BASIC_STATS, ptr(buf)) as number);
    held.length = 0;
    const [u32, u64] = [new Uint32Array(buf.buffer), new BigUint64Array(buf.buffer)];
    const [rdev, dev] = [[u32[32], u32[33]], `${u32[34]}:${u32[35]}`];
    return { ...at, uid: u32[5], gid: u32[6], mode: u32[7] & 0xffff, ino: u64[4], size: Number(u64[5]), rdev, dev };
  };
  return {
    userfaultfd: (flags: number) => answer(c.syscall(arch.nr, flags, 0, 0, 0, 0) as number),
    stat,
    open: (path: string, flags: number) => answer(c.open(cstr(path), flags)),
    /** `arg` is a struct buffer, or an integer argument such as USERFAULTFD_IOC_NEW's flags. */
    ioctl: (fd: number, request: bigint, arg: Buf | number) => answer(c.ioctl(fd, request, arg as never)),
    mmap: (addr: number, length: number, prot: number, flags: number, fd: number) =>
      answer(c.mmap(addr, length, prot, flags, fd, 0) as number),
    munmap: (addr: number, length: number) => answer(c.munmap(addr, length)),
    close: (fd: number) => answer(c.close(fd)),
    memfdCreate: (name: string, flags: number) => answer(c.memfd_create(cstr(name), flags)),
    ftruncate: (fd: number, length: number) => answer(c.ftruncate(fd, length)),
    read: (fd: number, buf: Buf) => answer(c.read(fd, buf, buf.byteLength) as number),
    /** poll() for POLLIN on one fd: ret 1 when it is ready, 0 when the time ran out. */
    poll(fd: number, timeoutMs: number) {
      pollfd.set([fd, POLLIN]); // a pollfd: the fd, then events in the low half and revents cleared
      return answer(c.poll(pollfd, 1, timeoutMs));
    },
    /** Starts the libc function `fn(arg)` on a new native thread; ret is the thread handle. */
    thread(fn: string, arg: number): R {
      const start = c.dlsym(null, cstr(fn)); // RTLD_DEFAULT is NULL on glibc and musl
      if (!start) return { ret: -1, errno: errnoOf("ENOENT") };
      return pthread(c.pthread_create(tid, null, start, arg), () => Number(tid[0]));
    },
    /** Joins a thread; ret is the low 32 bits of its return value, as a signed int (a C int or size_t). */
    join: (thread: number) => pthread(c.pthread_join(thread, retval), returned),
    /** Joins a thread that has finished; errno EBUSY while it still runs. */
    tryJoin: (thread: number) => pthread(c.pthread_tryjoin_np(thread, retval), returned),
    pageSize: () => c.getpagesize(),
    /** 1 when fd is a terminal. process.stdout.isTTY would cost Bun ~20 ms of start-up. */
    isatty: (fd: number) => c.isatty(fd),
    /** Writes bytes (or text as UTF-8) to fd with one write(2): ret is how many were written. */
    write(fd: number, data: string | Uint8Array) {
      const bytes = typeof data === "string" ? utf8.encode(data) : data;
      return answer(c.write(fd, bytes, bytes.length) as number);
    },
    /**
     * A small regular file (/proc, /sys, /etc) as Latin-1, or null when it cannot be read whole: opened
     * non-blocking, and read only when it is a regular file (a FIFO or a device put there is "unreadable").
     */
    readText(path: string, max = READ_MAX): string | null {
      const fd = c.open(cstr(path), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
      if (fd < 0) return null;
      try {
        if ((stat("", fd, AT_EMPTY_PATH).mode & S_IFMT) !== S_IFREG) return null;
        let text = "";
        for (let n = 1; n > 0; text += latin1(textBuffer.subarray(0, n))) {
          n = c.read(fd, textBuffer, textBuffer.length) as number;
          if (n < 0 || text.length + n > max) return null;
        }
        return text;
      } finally {
        c.close(fd);
      }
    },
  };
}

/** The address of a buffer, for struct fields that hold a user pointer (uffdio_copy.src). */
export const addressOf = (buf: Uint8Array) => ptr(buf);
/** A view of `length` bytes of mapped memory at `addr`; valid only until the munmap. */
export const memory = (addr: number, length: number) => new Uint8Array(toArrayBuffer(addr as never, 0, length));
