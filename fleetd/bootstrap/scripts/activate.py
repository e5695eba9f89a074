"""activate.py PREFIX VERSION: point PREFIX/current at versions/VERSION with one rename
(a symlink replaced atomically)."""

import os
import sys


def main() -> None:
    prefix, version = sys.argv[1], sys.argv[2]
    link = os.path.join(prefix, "current")
    new = link + ".new"
    if os.path.lexists(new):
        os.unlink(new)
    os.symlink(os.path.join("versions", version), new)
    os.replace(new, link)


if __name__ == "__main__":
    main()
