"""A ``kill -9`` soak on a study that prunes, distils and evaluates through the packed
engine (issue #24's evidence): runs the slow test ``test_kill_9_soak``
(``tests/test_reliability_study.py``) with the number of kills and the seed given, and
prints its summary line (kills by phase, cycles, whether every finished store equals an
uninterrupted run's). Usage::

    python benchmarks/soak_kill9.py [--kills 30] [--seed 15] [--report soak.json]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=30)
    parser.add_argument("--seed", type=int, default=15)
    parser.add_argument("--report", help="write the summary as JSON here")
    args = parser.parse_args()
    report = args.report or str(Path(tempfile.mkdtemp(prefix="soak_")) / "soak.json")
    env = {**os.environ, "BINSENSE_SOAK_KILLS": str(args.kills),
           "BINSENSE_SOAK_SEED": str(args.seed), "BINSENSE_SOAK_REPORT": report}  # fmt: skip
    cmd = [sys.executable, "-m", "pytest", "-q", "-s", "-m", "slow",
           "tests/test_reliability_study.py", "-k", "kill_9_soak"]  # fmt: skip
    done = subprocess.run(cmd, cwd=REPO, env=env, check=False)
    if Path(report).is_file():
        print("summary:", Path(report).read_text().strip())
    return done.returncode


if __name__ == "__main__":
    raise SystemExit(main())
