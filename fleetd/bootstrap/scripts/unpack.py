"""unpack.py STAGED FINAL MODULE...: run by the host's python3 in the staged version
directory: unpack agent.zip, byte-compile it (as if in FINAL, where it will be), and
import every module the agent needs from there, isolated. Prints psutil=VERSION PATH."""

import compileall
import os
import sys
import zipfile


def main() -> None:
    staged, final = sys.argv[1], sys.argv[2]
    archive = os.path.join(staged, "agent.zip")
    with zipfile.ZipFile(archive) as z:
        z.extractall(staged)
    os.unlink(archive)
    os.chmod(os.path.join(staged, "bin", "fleet-agent"), 0o755)
    compileall.compile_dir(staged, quiet=2, ddir=final)
    sys.path[:0] = [staged, os.path.join(staged, "lib")]
    for name in sys.argv[3:]:
        __import__(name)
    import psutil  # the one the payload brought, or the host's

    print(f"psutil={psutil.__version__} {psutil.__file__}")


if __name__ == "__main__":
    main()
