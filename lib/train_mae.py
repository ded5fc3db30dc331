"""``python -m lib.train_mae ...`` is ``xecmae pretrain ...``."""

import sys

from xecmae.cli import entry

if __name__ == "__main__":
    entry(["pretrain", *sys.argv[1:]])
