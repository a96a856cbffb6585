/**
 * --pid: a process's paths, resolved inside its root as the process resolves them, and never into a file system that
 * may never answer (FUSE, or an overlay with a layer under a FUSE mount) nor into a mount the probe cannot place.
 * openat2(RESOLVE_IN_ROOT) within the root's own mount; else a walk a component at a time that places each file's
 * mount before it looks into it. pid.ts loads this file for --pid.
 *
 * ```ts
 * import { walker } from "./walk.ts";
 * const walk = walker(sys, rootFd, pid); // walk.resolve("/dev/userfaultfd"): an O_PATH fd in its root, or the errno
 * ```
 */
import type { R, Sys } from "./ffi.ts";
import * as K from "./ffi.ts";
import { rootsAlone } from "./qemu.ts";
import { field } from "./shared.ts";

const F = K.FFIType;
/** libc calls only the walk makes: openat, readlinkat, and openat2() through syscall() (it has no libc wrapper). */
const calls = () =>
  K.openLibc({
    syscall: { args: [F.i64, F.i32, F.ptr, F.ptr, F.u64], returns: F.i64_fast },
    openat: { args: [F.i32, F.ptr, F.i32], returns: F.i32 },
    readlinkat: { args: [F.i32, F.ptr, F.ptr, F.u64], returns: F.i64_fast },
  });
let opened: ReturnType<typeof calls> | null = null;
const libc = () => (opened ??= calls());

/** A symbolic link's text (magic links in /proc: d_path(), nothing of the target file system is touched). */
export const link = (path: string) => {
  try {
    return (require("node:fs") as typeof import("node:fs")).readlinkSync(path, "latin1");
  } catch {
    return null;
  }
};

/** A mount of a mountinfo table: its id, device (major:minor), mount point, type and options (as escaped there). */
type Mount = NonNullable<ReturnType<typeof mountsOf>>[number];
/** /proc/PID/mountinfo's mounts: id, device, mount point (as the process sees it) and type; null if unread. */
/** mountinfo's octal escapes (\040 for a space) undone. */
const unoctal = (p: string) => p.replace(/\\([0-7]{3})/g, (_, o) => String.fromCharCode(Number.parseInt(o, 8)));
export function mountsOf(text: string | null) {
  return (
    text
      ?.split("\n")
      .map((line) => line.split(" "))
      .filter((f) => f.includes("-"))
      .map((f) => {
        const [type, options] = [f[f.indexOf("-") + 1], f[f.indexOf("-") + 3] ?? ""];
        return { id: Number(f[0]), dev: f[2], point: unoctal(f[4]), type, options };
      }) ?? null
  );
}

// include/uapi/linux/openat2.h.
const [RESOLVE_NO_XDEV, RESOLVE_NO_MAGICLINKS, RESOLVE_IN_ROOT, NR_OPENAT2] = [0x01, 0x02, 0x10, 437];

const [S_IFLNK, MAXSYMLINKS, PATH_MAX] = [0o120000, 40, 4096];
const [ENOSYS, ELOOP, EXDEV] = [K.errnoOf("ENOSYS"), K.errnoOf("ELOOP"), K.errnoOf("EXDEV")];
/** statx() from the attributes cached (include/uapi/linux/fcntl.h): FUSE's server is not asked. */
const AT_STATX_DONT_SYNC = 0x4000;
/** An open file's statx() from cached attributes: a FUSE server is not asked. */
export const statOf = (sys: Sys, fd: number) => sys.stat("", fd, K.AT_EMPTY_PATH | AT_STATX_DONT_SYNC);
/**
 * `path` resolved inside the directory `root` as a process whose root it is resolves it, as an O_PATH
 * fd (or the errno): `..` and absolute symbolic links stay inside, magic links are refused (openat2()
 * with RESOLVE_IN_ROOT, 5.6+: ENOSYS before), with `resolve`'s flags too.
 */
export function openat2(root: number, path: string, resolve: number) {
  const flags = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS | resolve;
  const how = new BigUint64Array([BigInt(K.O_PATH | K.O_CLOEXEC), 0n, BigInt(flags)]);
  return K.answer(libc().syscall(NR_OPENAT2, root, K.cstr(path), how, how.byteLength) as number);
}
/**
 * The walk: openat(O_PATH|O_NOFOLLOW) a component at a time; a link's text is followed inside `root`.
 * `enters(fd)`, when given, is asked of the root and of each file reached before anything looks at or
 * into it: a reason stops the walk there (a FUSE mount that may never answer), unless that file is the last.
 */
export function walkIn(
  sys: Sys,
  root: number,
  path: string,
  enters?: (fd: number) => string | null,
): R & { stopped?: string } {
  const c = libc();
  const open = (dir: number, name: string) =>
    K.answer(c.openat(dir, K.cstr(name), K.O_PATH | K.O_NOFOLLOW | K.O_CLOEXEC));
  const top = open(root, ".");
  if (top.ret < 0) return top;
  const dirs = [top.ret]; // where the walk is, last; the root first
  const parts = path.split("/");
  // The root itself may be on FUSE (rootless Podman's fuse-overlayfs): nothing below it is looked up then.
  const refused = enters?.(top.ret);
  if (refused && parts.some((p) => p !== "" && p !== ".")) {
    sys.close(top.ret);
    return { ret: -1, errno: 0, stopped: refused };
  }
  const text = new Uint8Array(PATH_MAX);
  try {
    for (let links = 0; parts.length; ) {
      const name = parts.shift()!;
      if (name === "" || name === ".") continue;
      if (name === "..") {
        if (dirs.length > 1) sys.close(dirs.pop()!); // `..` of the root is the root
        continue;
      }
      const fd = open(dirs.at(-1)!, name);
      if (fd.ret < 0) return fd;
      const stop = enters?.(fd.ret);
      if (stop && parts.some((p) => p !== "")) {
        sys.close(fd.ret);
        return { ret: -1, errno: 0, stopped: stop };
      }
      if (stop || (sys.stat("", fd.ret, K.AT_EMPTY_PATH).mode & K.S_IFMT) !== S_IFLNK) {
        dirs.push(fd.ret);
        continue;
      }
      const n = Number(c.readlinkat(fd.ret, K.cstr(""), text, text.length));
      sys.close(fd.ret);
      if (n < 0 || ++links > MAXSYMLINKS) return { ret: -1, errno: ELOOP };
      if (text[0] === 0x2f) while (dirs.length > 1) sys.close(dirs.pop()!); // absolute: from the root again
      parts.unshift(...K.latin1(text.subarray(0, n)).split("/"));
    }
    return { ret: dirs.pop()!, errno: 0 };
  } finally {
    for (const d of dirs) sys.close(d);
  }
}

/** Whether an overlay has a layer (its lowerdir, upperdir) under one of the `fuse` mounts; any, if it names none. */
export function onFuse(overlay: Pick<Mount, "options">, fuse: Pick<Mount, "point">[]) {
  // Options split where mountinfo has a raw comma (one in a path is \054 there, a space \040); `lowerdir=` lists
  // layers split at a raw colon (an escaped one is \134: there), `lowerdir+=`, `upperdir=`, `datadir+=` one each.
  const options = [...overlay.options.matchAll(/(lowerdir=|(?:lower|upper|data)dir\+?=)([^,]*)/g)];
  const split = ([, key, value]: string[]) => (key === "lowerdir=" ? value.split(/(?<!\\134):/) : [value]);
  const layers = options
    .flatMap(split)
    .map((p) => unoctal(p).replace(/\\:/g, ":"))
    .filter(Boolean);
  const under = (path: string, point: string) => path === point || path.startsWith(point === "/" ? "/" : `${point}/`);
  // A relative layer is as its mounter typed it, from a directory the probe cannot know: it may be under FUSE.
  const fused = (p: string) => !p.startsWith("/") || fuse.some((f) => under(p, f.point));
  return fuse.length > 0 && (layers.length === 0 || layers.some(fused));
}

/**
 * How the probe walks a process's files: inside its root, and never into a file system that may never
 * answer (FUSE, or an overlay with a layer under a FUSE mount), nor into a mount it
 * cannot place. openat2() within the root's own mount where no FUSE is mounted; else, or where the path
 * crosses a mount, the walk, which looks at each file's mount before it looks into it, the root's first.
 */
export function walker(sys: Sys, root: number, pid: number) {
  const tables = () => [`/proc/${pid}/mountinfo`, "/proc/self/mountinfo"].map((t) => mountsOf(sys.readText(t)) ?? []);
  const fuseIn = (mounts: Mount[]) => mounts.some((m) => m.type.startsWith("fuse"));
  /**
   * The mount an open file is on, from tables read once it is open (an open file holds its mount, so no
   * other has its id or device then): the process's by id, else the probe's by id, or by device (a
   * chroot's table leaves out the mount its root lies in; in a mount namespace of its own, under an id of
   * its copy's). Its device is statx()'s cached one, which FUSE is not asked for. Also the FUSE mounts of
   * either table, which an overlay may stack on (one unmounted since, or hidden from both, is not seen).
   */
  const placed = (fd: number) => {
    const id = Number(field(sys.readText(`/proc/self/fdinfo/${fd}`), "mnt_id"));
    const [theirs, ours] = tables();
    const byDevice = () => {
      const st = statOf(sys, fd);
      return st.ret === 0 ? ours.find((m) => m.dev === st.dev) : undefined;
    };
    const mount = theirs.find((m) => m.id === id) ?? ours.find((m) => m.id === id) ?? byDevice();
    return { mount, fuse: [...theirs, ...ours].filter((m) => m.type.startsWith("fuse")) };
  };
  const mountOf = (fd: number) => placed(fd).mount;
  const refuses = (fd: number) => {
    const { mount: m, fuse } = placed(fd);
    if (!m) return "it lies on a mount that is in no mount table the probe read, which it does not enter";
    const untrusted = m.type.startsWith("fuse") || (m.type === "overlay" && onFuse(m, fuse));
    return untrusted ? `it lies under the ${m.type} mount at ${m.point}, which the probe does not enter` : null;
  };
  // A walk stopped before a mount it does not enter answers ENODEV: what is there was not looked at.
  const resolve = (path: string): R & { stopped?: string } => {
    const within = tables().some(fuseIn) || refuses(root) ? null : openat2(root, path, RESOLVE_NO_XDEV);
    const r: R & { stopped?: string } =
      !within || [EXDEV, ENOSYS].includes(within.errno) ? walkIn(sys, root, path, refuses) : within;
    return r.stopped ? { ...r, errno: K.errnoOf("ENODEV") } : r;
  };
  return { resolve, refuses, mountOf };
}
/** The file system a path reaches inside the process's root, by its mount (fdinfo's mnt_id). */
export function walkedTo(sys: Sys, walk: ReturnType<typeof walker>, path: string) {
  const r = walk.resolve(path);
  if (r.stopped) return { type: null, how: r.stopped };
  if (r.ret < 0) return { type: null, how: `its path in the process's root: ${K.errnoName(r.errno)}` };
  const [mount, refused] = [walk.mountOf(r.ret), walk.refuses(r.ret)];
  const type = mount?.type ?? null;
  sys.close(r.ret);
  if (type?.startsWith("fuse") || !refused) {
    const how = type ? "its path in the process's root" : "its mount is not in the process's mount table";
    return { type, how, options: mount?.options };
  }
  return { type: null, how: refused };
}
/**
 * The directory a mem-path names, or its parent when it names a file (QEMU's two readings), as an O_PATH fd
 * walked inside the process's root; null when it cannot be reached or lies on a mount the probe does not enter.
 */
export function ramDir(sys: Sys, walk: ReturnType<typeof walker>, memPath: string): number | null {
  for (const path of [memPath, memPath.replace(/\/+[^/]*\/*$/, "") || "/"]) {
    const r = walk.resolve(path);
    if (r.ret < 0) continue;
    if (!walk.refuses(r.ret) && (sys.stat("", r.ret, K.AT_EMPTY_PATH).mode & K.S_IFMT) === S_IFDIR) return r.ret;
    sys.close(r.ret);
  }
  return null;
}
const S_IFDIR = 0o040000;

/** Whether the file at `fd` is mapped executable in the process (/proc/PID/maps: its device and inode). */
export function mapped(sys: Sys, pid: number, fd: number) {
  const st = sys.stat("", fd, K.AT_EMPTY_PATH);
  const [major, minor] = st.dev.split(":").map(Number);
  const dev = `${major.toString(16).padStart(2, "0")}:${minor.toString(16).padStart(2, "0")}`;
  const maps = sys.readText(`/proc/${pid}/maps`) ?? "";
  return maps.split("\n").some((l) => {
    const [, perms, , at, inode] = l.split(/\s+/);
    return perms?.[2] === "x" && at === dev && inode === String(st.ino);
  });
}
/** Whether two open files are the same file (the same device and inode). */
export function sameFile(sys: Sys, a: number, b: number) {
  const [x, y] = [statOf(sys, a), statOf(sys, b)];
  return x.ret === 0 && y.ret === 0 && x.dev === y.dev && x.ino === y.ino;
}
/**
 * hostOwned() for --pid, where the tenant may change a link or a mount on the way while the probe looks:
 * the kernel's name for the open file `fd` when it and each directory above it are root's, writable by no
 * one else, and on mounts the walk enters. Its directory is walked to and must hold that very file; those
 * above are reached by `..`, so no path is looked up again.
 */
export function ownedAt(sys: Sys, walk: ReturnType<typeof walker>, fd: number): string | null {
  const name = link(`/proc/self/fd/${fd}`);
  if (!name?.startsWith("/") || name.endsWith(" (deleted)")) return null;
  const trusted = (at: number) => {
    const st = statOf(sys, at);
    return rootsAlone(st) && !walk.refuses(at) ? st : null;
  };
  const openAt = (dir: number, file: string) =>
    K.answer(libc().openat(dir, K.cstr(file), K.O_PATH | K.O_NOFOLLOW | K.O_CLOEXEC));
  const dirOf = name.slice(0, name.lastIndexOf("/")) || "/";
  const dir = walk.resolve(dirOf);
  if (dir.ret < 0) return null;
  const held = [dir.ret];
  try {
    if (!trusted(fd) || !trusted(dir.ret)) return null;
    const inDir = openAt(dir.ret, name.slice(name.lastIndexOf("/") + 1));
    if (inDir.ret >= 0) held.push(inDir.ret);
    if (inDir.ret < 0 || !sameFile(sys, inDir.ret, fd)) return null;
    for (let at = dir.ret; ; ) {
      const st = trusted(at);
      const up = st && openAt(at, "..");
      if (!st || !up || up.ret < 0) return null;
      held.push(up.ret);
      const parent = statOf(sys, up.ret);
      // At the root (its own parent): the directory checked must be the one the name says, no link between.
      if (parent.dev === st.dev && parent.ino === st.ino)
        return link(`/proc/self/fd/${dir.ret}`) === dirOf ? name : null;
      at = up.ret;
    }
  } finally {
    for (const h of held) sys.close(h);
  }
}
