"""`python -m gscnn_tf.cli`: the `gscnn-tf` command."""

import sys

from gscnn_tf.cli import main

if __name__ == "__main__":  # not when a tool imports every module of the package
    sys.exit(main())
