"""Ship the student: a self-contained bundle (weights, metadata, preprocessing, ONNX) and its runtimes."""
