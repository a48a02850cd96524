"""`python -m lab.worker ABLATION [overrides]`: one sweep worker process (started by lab sweep)."""

import sys

from lab.sweep import worker_main

if __name__ == "__main__":
    sys.exit(worker_main(sys.argv[1:]))
