"""What the detector is, independent of how events are made or reconstructed: the light model."""
