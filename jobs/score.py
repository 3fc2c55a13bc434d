"""bertml score as a Ray job: `python jobs/score.py --config jobs/configs/score.yaml [key=value ...]`.

On a cluster: `ray job submit --working-dir . -- python jobs/score.py --config jobs/configs/score.yaml ...`.
All logic lives in bertml/; this file only hands its arguments to the CLI.
"""

import sys

from bertml.cli import run

if __name__ == "__main__":
    run(["score", *sys.argv[1:]])
