"""asv's build step for one commit (asv.conf.json, "build_command"): a wheel of prefixindex.

    python build_commit.py BUILD_DIR WHEEL_DIR

The compiled core is built when the commit has one. Commits from before it existed have a setup.py
that fails without its sources, so for them PREFIXINDEX_NO_EXTENSIONS=1 builds the pure-Python
package, and the suite reports the compiled backend as skipped there.
"""

import os
import subprocess
import sys


def main(argv):
    build_dir, wheel_dir = argv
    env = dict(os.environ)
    if not os.path.exists(os.path.join(build_dir, "prefixindex", "_core.pyx")):
        env["PREFIXINDEX_NO_EXTENSIONS"] = "1"
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-index", "--no-build-isolation",
           "-w", wheel_dir, build_dir]
    return subprocess.call(cmd, env=env)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
