"""``python -m lib.train_regressor ...`` (or ``python lib/train_regressor.py ...``) is ``xecmae finetune ...``."""

import sys

from xecmae.cli import entry

if __name__ == "__main__":
    entry(["finetune", *sys.argv[1:]])
