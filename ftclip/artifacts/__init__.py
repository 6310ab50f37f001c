"""What leaves a run: exports (open_clip, ONNX) and the one inference path over runs and exports.

Loading is not training: nothing here imports the training engine (checked by import-linter).
"""
