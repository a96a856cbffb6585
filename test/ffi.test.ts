/** Tests of ffi.ts: the kernel ABI, checked against the headers and the running kernel. */
import { describe, expect, test } from "bun:test";
import * as K from "../ffi.ts";

describe("ffi.ts", () => {
  test("ioctl codes match include/uapi/linux/userfaultfd.h on x86_64", () => {
    expect(process.arch).toBe("x64");
    const codes = [
      K.UFFDIO_API,
      K.UFFDIO_REGISTER,
      K.UFFDIO_UNREGISTER,
      K.UFFDIO_WAKE,
      K.UFFDIO_COPY,
      K.UFFDIO_ZEROPAGE,
    ];
    expect([...codes, K.UFFDIO_WRITEPROTECT, K.USERFAULTFD_IOC_NEW]).toEqual([
      0xc018aa3fn,
      0xc020aa00n,
      0x8010aa01n,
      0x8010aa02n,
      0xc028aa03n,
      0xc020aa04n,
      0xc018aa06n,
      0xaa00n,
    ]);
  });
  test("UFFD_FEATURE has the 17 kernel bits in order", () => {
    expect(Object.values(K.UFFD_FEATURE)).toEqual(Array.from({ length: 17 }, (_, i) => 1n << BigInt(i)));
  });
  test("errnoName() names the kernel's numbers in header order and says so when it does not know one", () => {
    expect([1, 2, 11, 12, 13, 22, 24, 38, 95, 999].map(K.errnoName)).toEqual([
      "EPERM",
      "ENOENT",
      "EAGAIN",
      "ENOMEM",
      "EACCES",
      "EINVAL",
      "EMFILE",
      "ENOSYS",
      "EOPNOTSUPP",
      "errno 999",
    ]);
  });
});
