"""Train Gated-SCNN: the same as `gscnn-tf train`. With no arguments, trains the built-in
synthetic default (generating the dataset if missing) and prints validation mIoU and boundary F.
"""

import sys

from gscnn_tf.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
