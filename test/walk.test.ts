/** Tests of walk.ts: paths resolved inside a process's root, and the mounts never looked into. */

import { describe, expect, test } from "bun:test";
import { mkdirSync, mkdtempSync, symlinkSync, writeFileSync } from "node:fs";
import type { R } from "../ffi.ts";
import * as K from "../ffi.ts";
import { onFuse, openat2, walkIn } from "../walk.ts";
import { isRoot, sys, world } from "./helpers.ts";

describe("walk.ts: a path of a process, resolved inside its root", () => {
  test("onFuse(): an overlay is not entered when a layer of it lies under a FUSE mount, or it names none", () => {
    const fuse = [{ point: "/var/lib/lazy" }, { point: "/srv/a b,c" }, { point: "/srv/l:2" }];
    const overlay = (options: string) => onFuse({ options }, fuse);
    expect([
      overlay("rw,lowerdir=/var/lib/docker/l/A:/var/lib/docker/l/B,upperdir=/var/lib/docker/u,workdir=/w"),
      overlay("rw,lowerdir=/var/lib/docker/l/A:/var/lib/lazy/layer7,upperdir=/var/lib/docker/u"),
      overlay("rw,lowerdir+=/var/lib/lazy,upperdir=/u"),
      overlay("rw,upperdir=/var/lib/lazy-not/u"),
      overlay("rw"),
      onFuse({ options: "rw" }, []),
      // mountinfo's escapes: a comma in a path is \054 there, a space \040; data-only layers too.
      overlay(String.raw`rw,lowerdir=/srv/a\040b\054c/l,upperdir=/u`),
      overlay("rw,lowerdir=/l,datadir+=/var/lib/lazy/data"),
      // A colon in a path: escaped in a `lowerdir=` list, as it is in `lowerdir+=`, which names one layer.
      overlay(String.raw`rw,lowerdir=/x:/srv/l\134:2,upperdir=/u`),
      overlay("rw,lowerdir+=/srv/l:2,upperdir=/u"),
      // A relative layer, as its mounter typed it from a directory the probe cannot know.
      overlay("rw,lowerdir=l,upperdir=/u"),
    ]).toEqual([false, true, true, false, true, false, true, true, true, true, true]);
  });

  test.skipIf(!isRoot)(
    "the walk that stands in for openat2() where the kernel lacks it resolves as openat2() does",
    () => {
      const dir = mkdtempSync(`${world}/walk-`);
      mkdirSync(`${dir}/a/b`, { recursive: true });
      writeFileSync(`${dir}/inside`, "");
      symlinkSync("/inside", `${dir}/a/absolute`);
      symlinkSync("../../../../inside", `${dir}/a/b/up`);
      symlinkSync("b", `${dir}/a/dir`);
      symlinkSync("loop", `${dir}/loop`);
      const root = sys.open(dir, K.O_PATH | K.O_CLOEXEC).ret;
      const inode = (r: R) => {
        if (r.ret < 0) return K.errnoName(r.errno);
        const st = sys.stat("", r.ret, K.AT_EMPTY_PATH);
        sys.close(r.ret);
        return String(st.ino);
      };
      try {
        const paths = ["/a/absolute", "/a/b/up", "/a/dir/up", "/../../inside", "/loop", "/a/missing", "/inside/x", "/"];
        const viaWalk = paths.map((p) => inode(walkIn(sys, root, p)));
        expect(viaWalk).toEqual(paths.map((p) => inode(openat2(root, p, 0))));
        const ino = (p: string) => String(sys.stat(p).ino);
        expect(viaWalk).toEqual([
          ino(`${dir}/inside`),
          ino(`${dir}/inside`),
          ino(`${dir}/inside`),
          ino(`${dir}/inside`),
          "ELOOP",
          "ENOENT",
          "ENOTDIR",
          ino(dir),
        ]);
      } finally {
        sys.close(root);
      }
    },
  );
});
