"""Hides this machine's copies of the kit's packages (tests/gpu/kit.sh rehearse).

Run as root inside a private mount namespace (unshare -m). Prints the mount
points it covered. A directory is covered whole (by an empty tmpfs) when every
file under it belongs to a kit package; otherwise the walk goes down into it,
and single files are covered by an empty file. Symbolic links are left alone:
a bind mount on a link would land on its target, which may be a base library
(libz.so -> libz.so.1), and a link into a covered directory or file already
leads nowhere useful.

Usage: python3 kit_hide.py EMPTY_FILE DEB...
"""
import os
import subprocess
import sys

SKIP = ("/usr/share/doc/", "/usr/share/man/", "/usr/share/lintian/")


def kit_paths(debs):
    paths = set()
    for deb in debs:
        listing = subprocess.run(["dpkg-deb", "--fsys-tarfile", deb], capture_output=True, check=True).stdout
        names = subprocess.run(["tar", "-t"], input=listing, capture_output=True, check=True).stdout.decode()
        for name in names.splitlines():
            path = "/" + name.lstrip("./").rstrip("/")
            if path != "/" and not path.startswith(SKIP):
                paths.add(path)
    return paths


def main():
    empty_file, debs = sys.argv[1], sys.argv[2:]
    owned = kit_paths(debs)
    # Directories on the way to a kit file: only these are walked.
    ancestors = set()
    for path in owned:
        parent = os.path.dirname(path)
        while parent not in ("/", ""):
            ancestors.add(parent)
            parent = os.path.dirname(parent)

    def wholly_owned(directory):
        for top, dirs, files in os.walk(directory):
            for name in files:
                if os.path.join(top, name) not in owned:
                    return False
        return True

    mounts = []

    def cover(path):
        if os.path.islink(path) or not os.path.exists(path):
            return
        if os.path.isdir(path):
            if path in owned and path not in ancestors:
                return  # an empty directory of the package
            if path.count("/") >= 3 and wholly_owned(path):
                mounts.append(("dir", path))
                return
            for name in sorted(os.listdir(path)):
                child = os.path.join(path, name)
                if child in owned or child in ancestors:
                    cover(child)
        elif path in owned:
            mounts.append(("file", path))

    for top in sorted({"/" + p.split("/")[1] for p in owned}):
        cover(top)
    for kind, path in mounts:
        if kind == "dir":
            subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=4k", "kit-hidden", path], check=True)
        else:
            subprocess.run(["mount", "--bind", "-o", "ro", empty_file, path], check=True)
        print(path)


if __name__ == "__main__":
    main()
