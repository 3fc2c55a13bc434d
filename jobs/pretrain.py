"""bertml pretrain as a Ray job: `python jobs/pretrain.py --config jobs/configs/pretrain.yaml [key=value ...]`.

On a cluster: `ray job submit --working-dir . -- python jobs/pretrain.py --config jobs/configs/pretrain.yaml ...`.
All logic lives in bertml/; this file only hands its arguments to the CLI.
"""

import sys

from bertml.cli import run

if __name__ == "__main__":
    run(["pretrain", *sys.argv[1:]])
