"""xecmae: masked-autoencoder pre-training and fine-tuning for the MEG II LXe calorimeter."""

__version__ = "0.1.0"
