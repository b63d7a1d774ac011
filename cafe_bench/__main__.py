"""``python -m cafe_bench`` (and ``torchrun ... -m cafe_bench run ...``): the ``cafe-bench`` command."""

import sys

from cafe_bench.cli import main

if __name__ == "__main__":
    sys.exit(main())
