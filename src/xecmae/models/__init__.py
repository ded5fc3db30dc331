"""Models: the shared encoder, the masked autoencoder, and (later) the regressor and inpainter."""

from xecmae.models.encoder import XECEncoder
from xecmae.models.mae import XEC_MAE, MAEOutput, build_mae

__all__ = ["XEC_MAE", "MAEOutput", "XECEncoder", "build_mae"]
