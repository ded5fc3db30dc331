"""What a trained model does outside training: predict, validate, export (ONNX, TorchScript)."""
