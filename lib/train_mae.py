"""``python -m lib.train_mae ...`` is ``xecmae pretrain ...``."""

import sys

from xecmae.cli import main

if __name__ == "__main__":
    sys.exit(main(["pretrain", *sys.argv[1:]]))
