"""bertml demo as a Ray job: `python jobs/demo.py [key=value ...]`.

On a cluster: `ray job submit --working-dir . -- python jobs/demo.py --config jobs/configs/demo.yaml ...`.
All logic lives in bertml/; this file only hands its arguments to the CLI.
"""

import sys

from bertml.cli import main

if __name__ == "__main__":
    sys.exit(main(["demo", *sys.argv[1:]]))
