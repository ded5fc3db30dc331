"""Thin forwarders for the documented commands (``python -m lib.train_mae ...``) into :mod:`xecmae`."""
