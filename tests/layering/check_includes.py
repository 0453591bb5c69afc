#!/usr/bin/env python3
"""The include order of src/: a file may include its own folder's headers and
those of folders below it, never a folder beside or above it. The order is the
one docs/architecture.md shows:

    common < cli < comm, data, models, io < memory < ddp, optim < run < train < plan < main.cpp

Usage: check_includes.py SRC_DIR   (exit 1 and one line per offending include)
       check_includes.py --self-test   (feeds it an upward and a sideways
                                        include; fails unless both are caught)
"""
import os
import re
import sys
import tempfile

LEVELS = {
    "common": 0,
    "cli": 1,
    "comm": 2, "data": 2, "models": 2, "io": 2,
    "memory": 3,
    "ddp": 4, "optim": 4,
    "run": 5,
    "train": 6,
    "plan": 7,
    "": 8,  # src/main.cpp
}
INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"')


def violations(src_dir):
    found = []
    for root, _, files in os.walk(src_dir):
        folder = os.path.relpath(root, src_dir)
        folder = "" if folder == "." else folder.split(os.sep)[0]
        for name in sorted(files):
            if not name.endswith((".h", ".cpp")):
                continue
            path = os.path.join(root, name)
            if folder not in LEVELS:
                found.append(f"{path}: folder '{folder}' has no place in the include order; add it to {__file__}")
                continue
            with open(path, encoding="utf-8") as source:
                for number, line in enumerate(source, 1):
                    match = INCLUDE.match(line)
                    if not match or "/" not in match.group(1):
                        continue
                    target = match.group(1).split("/")[0]
                    if target == folder:
                        continue
                    if target not in LEVELS:
                        found.append(f"{path}:{number}: includes \"{match.group(1)}\" from unknown folder '{target}'")
                    elif LEVELS[target] >= LEVELS[folder]:
                        where = "above" if LEVELS[target] > LEVELS[folder] else "beside"
                        found.append(f"{path}:{number}: {folder or 'main'} includes \"{match.group(1)}\", "
                                     f"a folder {where} it in the include order")
    return found


def self_test():
    with tempfile.TemporaryDirectory() as tree:
        def write(path, text):
            os.makedirs(os.path.dirname(os.path.join(tree, path)), exist_ok=True)
            with open(os.path.join(tree, path), "w") as out:
                out.write(text)
        write("common/error.h", "#pragma once\n")
        write("data/batch_plan.h", '#include "common/error.h"\n')
        write("train/trainer.h", '#include "data/batch_plan.h"\n')
        if violations(tree):
            print("self-test: a clean tree was flagged:", violations(tree))
            return 1
        write("data/sampler.h", '#include "train/trainer.h"\n')   # upward
        write("comm/placement.h", '#include "models/models.h"\n')  # sideways
        found = violations(tree)
        if len(found) != 2 or "above" not in " ".join(found) or "beside" not in " ".join(found):
            print("self-test: expected one upward and one sideways include, got:", found)
            return 1
    print("self-test: the checker caught an upward and a sideways include")
    return 0


if __name__ == "__main__":
    if sys.argv[1:] == ["--self-test"]:
        sys.exit(self_test())
    found = violations(sys.argv[1])
    for line in found:
        print(line)
    print(f"include order: {len(found)} violation(s) in {sys.argv[1]}")
    sys.exit(1 if found else 0)
