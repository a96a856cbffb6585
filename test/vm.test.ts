/** Tests of vm.ts: a VM's configuration from its command line. */
import { describe, expect, test } from "bun:test";
import { configChecks } from "../vm.ts";

describe("--pid (vm.ts): a VM's command line, for devices this machine has not got", () => {
  // VFIO needs a device to pass through and vhost-user a backend that speaks its protocol: neither is here.
  const vm = (cmdline: string[], vmLckKb: number | null = 0) =>
    configChecks({ cmdline, vmLckKb, cwd: "/", mounts: [], files: () => [], walk: () => ({ type: null, how: "" }) });
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
