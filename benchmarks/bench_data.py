"""Input-pipeline throughput (the same as ``reslab bench data``).

RESLAB_DATA=../shared/data uv run python benchmarks/bench_data.py
"""

import sys

from reslab.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "data", *sys.argv[1:]]))
