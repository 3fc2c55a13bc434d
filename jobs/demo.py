"""bertml demo as a Ray job: `python jobs/demo.py [key=value ...]`.

On a cluster: `ray job submit --working-dir . -- python jobs/demo.py --config jobs/configs/demo.yaml ...`.
All logic lives in bertml/; this file only hands its arguments to the CLI.
"""

import sys

from bertml.cli import run

if __name__ == "__main__":
    run(["demo", *sys.argv[1:]])
