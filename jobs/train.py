"""bertml train as a Ray job: `python jobs/train.py --config jobs/configs/train.yaml [key=value ...]`.

On a cluster: `ray job submit --working-dir . -- python jobs/train.py --config jobs/configs/train.yaml ...`.
All logic lives in bertml/; this file only hands its arguments to the CLI.
"""

import sys

from bertml.cli import run

if __name__ == "__main__":
    run(["train", *sys.argv[1:]])
