#!/usr/bin/env python3
"""Attributes recorded instructions (trace.py's "pc cr3" lines) to functions.

usage: attribute.py PCS KERNEL_ELF PERIOD_PC NAME=ELF[@PC] ...

Kernel addresses (the upper half) go to KERNEL_ELF. User addresses go to the
program whose address space (CR3) was seen executing its marker PC (the
first NAME=ELF@PC names that program's marker; the first program without
one takes every other space). One operation is the stretch between the
first two hits of PERIOD_PC. Prints instructions per side and per function.
"""
import bisect
import collections
import subprocess
import sys


def symbols(path):
    out = subprocess.run(["nm", "-C", "-n", "--defined-only", path], capture_output=True, text=True, check=True).stdout
    addrs, names = [], []
    for line in out.splitlines():
        parts = line.split(" ", 2)
        if len(parts) == 3 and parts[1] in "tTwW":
            addrs.append(int(parts[0], 16))
            names.append(parts[2])
    return addrs, names


def lookup(table, pc):
    i = bisect.bisect_right(table[0], pc) - 1
    return table[1][i] if i >= 0 else "?"


def main():
    if len(sys.argv) < 5:
        sys.exit("usage: attribute.py PCS KERNEL_ELF PERIOD_PC NAME=ELF[@PC] ...")
    pcs, kernel, period = sys.argv[1], symbols(sys.argv[2]), int(sys.argv[3], 16)
    rows = []
    for line in open(pcs):
        pc, cr3 = line.split()
        rows.append((int(pc, 16), int(cr3, 16) & 0x000FFFFFFFFFF000))
    programs, default = {}, None
    for arg in sys.argv[4:]:
        name, _, rest = arg.partition("=")
        path, _, marker = rest.partition("@")
        table = symbols(path)
        if marker:
            space = next((c for p, c in rows if p == int(marker, 16)), None)
            if space is None:
                sys.exit(f"attribute.py: {name}'s marker {marker} never ran")
            programs[space] = (name, table)
        elif default is None:
            default = (name, table)
    hits = [i for i, (p, _) in enumerate(rows) if p == period]
    if len(hits) < 2:
        sys.exit("attribute.py: the period PC ran fewer than twice; record more steps")
    labels = []
    for pc, cr3 in rows[hits[0]:hits[1]]:
        if pc >= 0xFFFF800000000000:
            labels.append(("kernel", lookup(kernel, pc)))
        else:
            name, table = programs.get(cr3, default)
            labels.append((name, lookup(table, pc)))
    print(f"instructions per operation: {len(labels)}")
    for side, n in collections.Counter(s for s, _ in labels).most_common():
        print(f"  {side}: {n}")
    for (side, fn), n in collections.Counter(labels).most_common(60):
        print(f"{n:7} {side:8} {fn[:140]}")


main()
