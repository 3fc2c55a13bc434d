"""bertml evaluate as a Ray job: `python jobs/evaluate.py --config jobs/configs/evaluate.yaml [key=value ...]`.

On a cluster: `ray job submit --working-dir . -- python jobs/evaluate.py --config jobs/configs/evaluate.yaml ...`.
All logic lives in bertml/; this file only hands its arguments to the CLI.
"""

import sys

from bertml.cli import run

if __name__ == "__main__":
    run(["evaluate", *sys.argv[1:]])
