"""``python -m lib.train_regressor ...`` (or ``python lib/train_regressor.py ...``) is ``xecmae finetune ...``."""

import sys

from xecmae.cli import main

if __name__ == "__main__":
    sys.exit(main(["finetune", *sys.argv[1:]]))
