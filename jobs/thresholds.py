"""bertml thresholds as a Ray job: `python jobs/thresholds.py --config jobs/configs/thresholds.yaml [key=value ...]`.

On a cluster: `ray job submit --working-dir . -- python jobs/thresholds.py --config jobs/configs/thresholds.yaml ...`.
All logic lives in bertml/; this file only hands its arguments to the CLI.
"""

import sys

from bertml.cli import run

if __name__ == "__main__":
    run(["thresholds", *sys.argv[1:]])
