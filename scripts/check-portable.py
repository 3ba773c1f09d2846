#!/usr/bin/env python3
"""Checks that an ELF binary starts on an old Linux: no glibc symbol version
above --max-glibc (default 2.17, RHEL 7 / Ubuntu 14.04 and later) and no
shared library outside the set every glibc system has (libcuda and libnccl are
dlopen'ed at run time, so they must not appear as link-time needs).

    scripts/check-portable.py [--max-glibc X.Y] [--allow NAME]... BINARY

Exit 0: portable; 1: names every offending symbol@version and library;
2: usage error, or not an ELF file this reader understands.

Only the standard library: a fresh machine may have no binutils. It reads the
section headers (.dynamic for DT_NEEDED, .gnu.version_r for the versions each
library must provide, .gnu.version and .dynsym for the symbols that ask for
them), which `strip` keeps.
"""

import argparse
import re
import struct
import sys

# Libraries of glibc itself and the GCC runtime that glibc's own programs use.
# Matched on the name before ".so" (libc.so.6 -> libc); ld-linux-* is the loader.
ALLOWED = {"libc", "libm", "libpthread", "libdl", "librt", "libgcc_s"}
LOADER = re.compile(r"^ld-linux(-[a-z0-9_-]+)?\.so(\.\d+)*$")

SHT_DYNSYM = 11
SHT_DYNAMIC = 6
SHT_GNU_VERNEED = 0x6FFFFFFE
SHT_GNU_VERSYM = 0x6FFFFFFF
DT_NEEDED = 1


class NotElf(Exception):
    """The input is not an ELF file this reader handles."""


class Elf:
    """The dynamic-linking facts of one ELF file: needed libraries, and for each
    version a library must provide, the undefined symbols that ask for it."""

    def __init__(self, data):
        if len(data) < 64 or data[:4] != b"\x7fELF":
            raise NotElf("not an ELF file")
        ei_class, ei_data = data[4], data[5]
        if ei_class not in (1, 2) or ei_data not in (1, 2):
            raise NotElf("unknown ELF class or byte order")
        self.data = data
        self.e = "<" if ei_data == 1 else ">"
        self.is64 = ei_class == 2
        if self.is64:
            shoff, = self.unpack("Q", 0x28)
            shentsize, shnum = self.unpack("HH", 0x3A)
        else:
            shoff, = self.unpack("I", 0x20)
            shentsize, shnum = self.unpack("HH", 0x2E)
        # Sections are found by type, so their names (shstrndx) are not read.
        self.sections = []
        for i in range(shnum):
            off = shoff + i * shentsize
            if self.is64:
                name, typ, _flags, _addr, offset, size, link, _info, _align, entsize = \
                    self.unpack("IIQQQQIIQQ", off)
            else:
                name, typ, _flags, _addr, offset, size, link, _info, _align, entsize = \
                    self.unpack("IIIIIIIIII", off)
            self.sections.append(
                {"type": typ, "offset": offset, "size": size, "link": link, "entsize": entsize})

    def unpack(self, fmt, off):
        fmt = self.e + fmt
        end = off + struct.calcsize(fmt)
        if off < 0 or end > len(self.data):
            raise NotElf("truncated ELF file (a header points past its end)")
        return struct.unpack_from(fmt, self.data, off)

    def string(self, strtab, off):
        start = strtab["offset"] + off
        end = self.data.find(b"\0", start, strtab["offset"] + strtab["size"])
        if off >= strtab["size"] or end < 0:
            raise NotElf("a string offset points outside its table")
        return self.data[start:end].decode("utf-8", "replace")

    def section(self, typ):
        for s in self.sections:
            if s["type"] == typ:
                return s
        return None

    def needed(self):
        """DT_NEEDED entries: the libraries the loader must find."""
        dyn = self.section(SHT_DYNAMIC)
        if dyn is None:
            return []
        strtab = self.sections[dyn["link"]]
        fmt, step = ("qQ", 16) if self.is64 else ("iI", 8)
        out = []
        for off in range(dyn["offset"], dyn["offset"] + dyn["size"] - step + 1, step):
            tag, val = self.unpack(fmt, off)
            if tag == 0:
                break
            if tag == DT_NEEDED:
                out.append(self.string(strtab, val))
        return out

    def version_needs(self):
        """{(library, version): [symbols]} from .gnu.version_r, with the
        undefined symbols of .dynsym whose .gnu.version index names each."""
        verneed = self.section(SHT_GNU_VERNEED)
        if verneed is None:
            return {}
        strtab = self.sections[verneed["link"]]
        by_index = {}
        needs = {}
        off = verneed["offset"]
        while True:
            _vn_version, vn_cnt, vn_file, vn_aux, vn_next = self.unpack("HHIII", off)
            lib = self.string(strtab, vn_file)
            aux = off + vn_aux
            for _ in range(vn_cnt):
                _hash, _flags, vna_other, vna_name, vna_next = self.unpack("IHHII", aux)
                key = (lib, self.string(strtab, vna_name))
                by_index[vna_other] = key
                needs.setdefault(key, [])
                if vna_next == 0:
                    break
                aux += vna_next
            if vn_next == 0:
                break
            off += vn_next
        versym = self.section(SHT_GNU_VERSYM)
        dynsym = self.section(SHT_DYNSYM)
        if versym is not None and dynsym is not None and dynsym["entsize"]:
            symstr = self.sections[dynsym["link"]]
            for i in range(dynsym["size"] // dynsym["entsize"]):
                sym_off = dynsym["offset"] + i * dynsym["entsize"]
                if self.is64:
                    st_name, _info, _other, st_shndx = self.unpack("IBBH", sym_off)
                else:
                    st_name, = self.unpack("I", sym_off)
                    st_shndx, = self.unpack("H", sym_off + 14)
                index, = self.unpack("H", versym["offset"] + 2 * i)
                key = by_index.get(index & 0x7FFF)
                if key is not None and st_shndx == 0:
                    needs[key].append(self.string(symstr, st_name))
        return needs


def glibc_version(name):
    """GLIBC_2.17 -> (2, 17); None for names that are not a numbered glibc version."""
    m = re.fullmatch(r"GLIBC_(\d+(?:\.\d+)*)", name)
    return tuple(int(p) for p in m.group(1).split(".")) if m else None


def library_allowed(name, extra):
    if name in extra or LOADER.match(name):
        return True
    return name.split(".so")[0] in ALLOWED


def check(path, max_glibc, extra_allowed):
    """Returns (problems, summary lines) for one file."""
    with open(path, "rb") as f:
        elf = Elf(f.read())
    problems = []
    for lib in elf.needed():
        if not library_allowed(lib, extra_allowed):
            problems.append("needs library %s (allowed: %s, ld-linux; load others with dlopen)"
                            % (lib, ", ".join(sorted(ALLOWED))))
    highest = None
    for (lib, version), symbols in sorted(elf.version_needs().items()):
        v = glibc_version(version)
        if version.startswith("GLIBC_") and v is None:
            # GLIBC_PRIVATE and the like: internal, changes with every release.
            problems.append("needs %s from %s: %s" % (version, lib, ", ".join(sorted(symbols)) or "?"))
            continue
        if v is None:
            continue
        highest = max(highest, v) if highest else v
        if v > max_glibc:
            for sym in sorted(set(symbols)) or ["(no symbol named)"]:
                problems.append("needs %s@%s (from %s) > GLIBC_%s"
                                % (sym, version, lib, ".".join(map(str, max_glibc))))
    summary = "highest glibc version needed: %s; libraries: %s" % (
        "GLIBC_" + ".".join(map(str, highest)) if highest else "none",
        ", ".join(elf.needed()) or "none (static)")
    return problems, summary


def main():
    ap = argparse.ArgumentParser(
        description="Fail if an ELF binary needs a glibc newer than --max-glibc "
                    "or a shared library outside glibc's own.")
    ap.add_argument("binary", nargs="+")
    ap.add_argument("--max-glibc", default="2.17", help="highest GLIBC_x.y allowed (default 2.17)")
    ap.add_argument("--allow", action="append", default=[], metavar="LIB",
                    help="another library allowed as a link-time need (exact name, e.g. libz.so.1)")
    args = ap.parse_args()
    max_glibc = glibc_version("GLIBC_" + args.max_glibc)
    if max_glibc is None:
        ap.error("--max-glibc wants a version like 2.17, got %r" % args.max_glibc)
    failed = False
    for path in args.binary:
        try:
            problems, summary = check(path, max_glibc, set(args.allow))
        except (OSError, NotElf) as e:
            print("check-portable: %s: %s" % (path, e), file=sys.stderr)
            return 2
        if problems:
            failed = True
            print("check-portable: %s: FAIL (target: GLIBC_%s)" % (path, args.max_glibc))
            for p in problems:
                print("  " + p)
        else:
            print("check-portable: %s: OK (target: GLIBC_%s)" % (path, args.max_glibc))
        print("  " + summary)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
