/** Tests of vm.ts: a VM's configuration from its command line. */
import { describe, expect, test } from "bun:test";
import { CAUSES, configChecks } from "../vm.ts";

const MiB = 1 << 20;

describe("--pid (vm.ts): a VM's command line, for devices this machine has not got", () => {
  // VFIO needs a device to pass through and vhost-user a backend that speaks its protocol: neither is here.
  const noPool = { size: 2 * MiB, pool: () => null };
  const vm = (cmdline: string[], vmLckKb: number | null = 0) =>
    configChecks({
      ...{ cmdline, vmLckKb, hugetlbKb: null, cwd: "/", mounts: [], hugePages: noPool },
      ...{ files: () => [], walk: () => ({ type: null, how: "" }) },
    });
  const QEMU = ["qemu-system-x86_64", "-machine", "pc"];

  test("vm-config: VFIO fails with QEMU's message; vhost-user warns naming each backend's socket, in both syntaxes", () => {
    const { checks } = vm([
      ...[...QEMU, "-device", '{"driver":"vfio-pci","host":"0000:01:00.0","id":"hostdev0"}'],
      ...["-chardev", "socket,id=charnet0,path=/run/vhost/net0.sock", "-netdev", "vhost-user,id=net0,chardev=charnet0"],
      ...[
        "-chardev",
        "socket,id=fs0,path=/run/virtiofsd.sock",
        "-device",
        '{"driver":"vhost-user-fs-pci","chardev":"fs0"}',
      ],
    ]);
    expect(checks[1]).toMatchObject({
      id: "vm-devices",
      status: "fail",
      detail:
        'vfio: "VFIO migration is not supported with postcopy migration" (QEMU 8.2+; before, VFIO blocks migration); ' +
        "vhost-user-fs-pci (socket /run/virtiofsd.sock), netdev net0 (socket /run/vhost/net0.sock): the backend must " +
        'offer VHOST_USER_PROTOCOL_F_PAGEFAULT, else "vhost-user backend not capable of postcopy"',
    });
  });

  test("virtio-mem passes (QEMU 7.2 and 10 migrate with it); locked memory is a note, since QEMU unlocks it", () => {
    const { checks, requires } = vm(
      [...QEMU, "-object", "memory-backend-ram,id=vmem0,size=1G", "-device", "virtio-mem-pci,memdev=vmem0"],
      2048,
    );
    expect(checks.map((c) => [c.id, c.status, c.detail])).toEqual([
      [
        "vm-memory",
        "pass",
        "anonymous RAM; memory locked (VmLck 2048 kB): QEMU unlocks it for postcopy, then locks it again",
      ],
      ["vm-devices", "pass", "devices: 1, none that refuses postcopy"],
    ]);
    expect(requires).toEqual([]);
    const asked = vm([...QEMU, "-overcommit", "mem-lock=on", "-object", "memory-backend-memfd,id=m,size=1G"], null);
    expect([asked.checks[0].detail, asked.requires]).toEqual([
      "shared memory (memfd or share=on); memory locked (VmLck unknown kB): QEMU unlocks it for postcopy, then locks it again",
      ["register-shmem"],
    ]);
  });
});

describe("--pid (vm.ts): huge pages for a VM's hugetlbfs memory, from the host's pool", () => {
  const POOL = "/sys/kernel/mm/hugepages/hugepages-1048576kB/nr_hugepages";
  /** A VM whose mem-paths are on hugetlbfs (`options`: its mount's), with a pool of 1 GiB pages of `total` and `free`. */
  type Pool = { total: number; free: number; resv?: number };
  const hugeVm = (cmdline: string[], options: string, pool: Pool | null, ownKb = 0) =>
    configChecks({
      ...{ cmdline, vmLckKb: 0, hugetlbKb: ownKb, cwd: "/", mounts: [], files: () => [] },
      walk: () => ({ type: "hugetlbfs", how: "its path in the process's root", options }),
      hugePages: {
        size: 2 * MiB,
        pool: (bytes) => (bytes === 1 << 30 && pool ? { resv: 0, ...pool, file: POOL } : null),
      },
    }).checks.find((c) => c.id === "vm-hugepages");
  const backend = '{"qom-type":"memory-backend-file","id":"ram0","mem-path":"/dev/hugepages1G","size":4294967296}';
  const incoming = ["qemu-system-x86_64", "-object", backend, "-incoming", "defer"];
  const GiB_PAGES = "rw,relatime,pagesize=1024M";

  test("an incoming VM the pool cannot hold fails, with a fix sized to it beside what other processes hold", () => {
    const [empty, othersHold, ownHeld] = [
      hugeVm(incoming, GiB_PAGES, { total: 2, free: 2 }),
      hugeVm(incoming, GiB_PAGES, { total: 8, free: 2 }),
      // Its own 4 pages are among those in use: the 2 others leave room.
      hugeVm(incoming, GiB_PAGES, { total: 8, free: 2 }, 4 * 1024 * 1024),
    ];
    expect(empty).toEqual({
      id: "vm-hugepages",
      title: "huge pages for this VM's memory",
      status: "fail",
      detail: "hugetlbfs: 4 GiB in 4 pages of 1 GiB (this host's pool has 2, 0 in use or reserved by other processes)",
      hint: `echo 4 > ${POOL}   # room for this VM's pages beside those in use; read it back: the kernel may grant fewer`,
    });
    expect([othersHold?.status, othersHold?.hint?.split("   #")[0]]).toEqual(["fail", `echo 10 > ${POOL}`]);
    expect([ownHeld?.status, ownHeld?.detail]).toEqual([
      "pass",
      "hugetlbfs: 4 GiB in 4 pages of 1 GiB (this host's pool has 8, 2 in use or reserved by other processes)",
    ]);
  });

  test("pages other processes reserved count as theirs; its own reservation (reserve=on, QEMU's default) as its own", () => {
    const noReserve = incoming.map((a) => a.replace('"size":4294967296', '"size":4294967296,"reserve":false'));
    // 6 of 8 pages reserved by an idle VM: free, yet not this one's to take.
    expect(hugeVm(noReserve, GiB_PAGES, { total: 8, free: 8, resv: 6 })?.status).toBe("fail");
    // Its own 4 reserved, at its mmap: room.
    expect(hugeVm(incoming, GiB_PAGES, { total: 8, free: 8, resv: 4 })?.status).toBe("pass");
  });

  test("a memfd backend on huge pages (libvirt's memfd with hugepages) is hugetlbfs memory", () => {
    const memfd =
      '{"qom-type":"memory-backend-memfd","id":"pc.ram","size":4294967296,"hugetlb":true,"hugetlbsize":1073741824,"share":true}';
    const vm = (pool: Pool) =>
      configChecks({
        ...{ cmdline: ["qemu-system-x86_64", "-object", memfd, "-incoming", "defer"], vmLckKb: 0, hugetlbKb: 0 },
        ...{ cwd: "/", mounts: [], files: () => [], walk: () => ({ type: null, how: "" }) },
        hugePages: { size: 2 * MiB, pool: (bytes) => (bytes === 1 << 30 ? { resv: 0, ...pool, file: POOL } : null) },
      });
    const { checks, requires } = vm({ total: 2, free: 2 });
    expect([requires, checks.find((c) => c.id === "vm-hugepages")?.status]).toEqual([["register-hugetlb"], "fail"]);
  });

  test("a VM that runs here is said, not judged: the destination's pool must hold it; -m sizes -mem-path in MiB", () => {
    const running = hugeVm(["qemu-system-x86_64", "-m", "size=2048", "-mem-path", "/dev/hugepages"], "rw", null);
    expect([running?.status, running?.detail]).toEqual([
      "pass",
      "hugetlbfs: 2 GiB in 1024 pages of 2 MiB; the destination's pool must hold them beside what it uses; could not tell this host's pool of 2 MiB pages",
    ]);
    // QEMU's default RAM (128 MiB) when -m is not given.
    expect(hugeVm(["qemu-system-x86_64", "-mem-path", "/dev/hugepages"], "rw", null)?.detail).toStartWith(
      "hugetlbfs: 128 MiB in 64 pages of 2 MiB;",
    );
  });

  test("an incoming VM whose size or pool the probe cannot read is a skip, never a yes", () => {
    const unsized = ["qemu-system-x86_64", "-object", "memory-backend-file,id=m,mem-path=/hp", "-incoming", "defer"];
    const [noSize, noPool] = [hugeVm(unsized, GiB_PAGES, { total: 8, free: 8 }), hugeVm(incoming, GiB_PAGES, null)];
    expect([noSize?.status, noSize?.detail]).toEqual(["skip", "could not tell the size of /hp"]);
    expect([noPool?.status, noPool?.detail]).toEqual([
      "skip",
      "hugetlbfs: 4 GiB in 4 pages of 1 GiB; could not tell this host's pool of 1 GiB pages",
    ]);
  });

  test("no hugetlbfs memory, no check; vm-hugepages is its own cause, not vm-config", () => {
    expect(hugeVm(["qemu-system-x86_64"], GiB_PAGES, null)).toBeUndefined();
    const failed = hugeVm(incoming, GiB_PAGES, { total: 0, free: 0 })!;
    const seen = { checks: [failed] } as Parameters<(typeof CAUSES)["vm-config"]["when"]>[0];
    expect([CAUSES["vm-config"].when(seen), CAUSES["vm-hugepages"].when(seen)]).toEqual([false, true]);
  });
});

describe("--pid (vm.ts): what QEMU does to the VM's RAM only once the migration runs", () => {
  /** A VM whose mem-paths are on tmpfs, holding `held` open (the RAM files QEMU opened, by the names it knows). */
  const vm = (cmdline: string[], version: string | null, held: string[] = []) =>
    configChecks({
      ...{ cmdline, vmLckKb: 0, hugetlbKb: null, cwd: "/", mounts: [], version },
      files: () => held.map((path) => ({ path, mount: () => ({ type: "tmpfs" }) })),
      walk: () => ({ type: "tmpfs", how: "its path in the process's root" }),
      hugePages: { size: 2 << 20, pool: () => null },
    }).checks.filter((c) => !["vm-memory", "vm-devices"].includes(c.id));
  const QEMU = ["qemu-system-x86_64", "-machine", "q35"];

  test("vm-readonly in QEMU 8.2+'s words (7.2's is measured in pid.test.ts); vm-private for a backend and -mem-path", () => {
    const readonly = vm(
      [...QEMU, "-object", "memory-backend-file,id=pc.ram,size=1G,mem-path=/dev/shm/r,readonly=on"],
      "10.1.0",
    );
    expect(readonly.map((c) => [c.id, c.status, c.detail])).toEqual([
      [
        "vm-readonly",
        "fail",
        'read-only RAM files (pc.ram): QEMU accepts postcopy-ram, then its destination fails when the migration starts: "ram_block_discard_range: Discarding RAM with readonly files is not supported" (QEMU 8.2+)',
      ],
    ]);
    // A file of its own name, mapped private, warns; -mem-path's directory holds a file QEMU made and unlinked.
    const args = [...QEMU, "-object", "memory-backend-file,id=m1,size=1G,mem-path=/dev/shm/p", "-mem-path", "/dev/shm"];
    const both = vm(args, null, ["/dev/shm/p", "/dev/shm/qemu_back_mem.pc.ram.Xq1ZbA"]);
    expect(both.map((c) => [c.id, c.status, c.detail.split(":")[0]])).toEqual([
      ["vm-private", "warn", "RAM files mapped private (m1)"],
    ]);
    // QEMU's booleans in each spelling: readonly=y is read-only; share=y is shared.
    const spelled = vm(
      [...QEMU, "-object", "memory-backend-file,id=y1,size=1G,mem-path=/dev/shm/y,readonly=y,share=y"],
      null,
      ["/dev/shm/y"],
    );
    expect(spelled.map((c) => c.id)).toEqual(["vm-readonly"]);
    // share=on, or a memfd, is no private file; a machine with no confidential-guest-support is no confidential guest.
    const shared = [
      ...QEMU,
      "-object",
      "memory-backend-file,id=m,mem-path=/dev/shm/s,share=on,size=1G",
      "-object",
      "sev-guest,id=s0",
    ];
    expect(vm(shared, null, ["/dev/shm/s"])).toEqual([]);
  });

  test("vm-confidential: SEV, SEV-SNP and TDX guests, named by the machine's confidential-guest-support", () => {
    const guest = (type: string) =>
      vm(
        [...QEMU.slice(0, 1), "-machine", "q35,confidential-guest-support=c0", "-object", `${type},id=c0`],
        "10.1.0",
      )[0]?.detail;
    // -M is -machine; memory-encryption is the older name; an object the probe cannot find is a skip, never a yes.
    const older = vm(["qemu-system-x86_64", "-M", "pc,memory-encryption=e0", "-object", "sev-guest,id=e0"], null);
    const missing = vm(["qemu-system-x86_64", "-M", "q35,confidential-guest-support=gone"], null);
    expect([older[0]?.status, missing[0]?.status]).toEqual(["fail", "skip"]);
    expect(["sev-guest", "sev-snp-guest", "tdx-guest"].map(guest)).toEqual([
      'a confidential guest (sev-guest): "SEV: Migration is not implemented" (the source refuses to migrate it at all)',
      'a confidential guest (sev-snp-guest): "SEV-SNP: Migration is not implemented" (the source refuses to migrate it at all)',
      "a confidential guest (tdx-guest): its private memory is guest_memfd, which no userfaultfd can serve and QEMU does not migrate (QEMU 10.1+)",
    ]);
  });
});
