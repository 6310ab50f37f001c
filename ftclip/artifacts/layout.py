"""The file names of an export folder, named once (written by export, read by inference and users).

An export folder (``ftclip export``, ``run.export``) holds::

    open_clip_model.safetensors   the whole open_clip model (LoRA merged), stock open_clip keys
    open_clip_config.json         {"model_cfg", "preprocess_cfg"} for open_clip's 'local-dir:' loading
    ftclip_export.json            the manifest: model, preprocessing, task, feature, recipe, metrics, versions
    text_features.safetensors     the task's text side (re-ID: id_text_features; IQA: positive/negative)
    prompts.safetensors           learned prompt token vectors (tasks that learn prompts)
    heads.safetensors             task heads (re-ID: BNNecks, classifiers, SIE)
    README.md                     model card
    image_encoder.onnx[.data]     --format onnx; text_encoder.onnx[.data] where the task needs it
"""

EXPORT_META = "ftclip_export.json"
OPEN_CLIP_CONFIG = "open_clip_config.json"
OPEN_CLIP_WEIGHTS = "open_clip_model.safetensors"
TEXT_FEATURES = "text_features.safetensors"
PROMPTS = "prompts.safetensors"
HEADS = "heads.safetensors"
MODEL_CARD = "README.md"
IMAGE_ONNX = "image_encoder.onnx"
TEXT_ONNX = "text_encoder.onnx"

#: The task tensors an export stores, by kind (``TaskModule.export_tensors()`` keys) -> file name.
TENSOR_FILES = {"text_features": TEXT_FEATURES, "prompts": PROMPTS, "heads": HEADS}

#: Image features an export can compute: ``proj`` is open_clip's ``encode_image``; ``final`` is the
#: pooled feature before the projection (every tower kind, ftclip/towers.py); ``final+proj`` their
#: concatenation (CLIP-ReID's).
FEATURES = ("proj", "final", "final+proj")

