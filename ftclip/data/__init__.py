"""Data sets: re-identification and image-quality loaders, image reading, synthetic sets.

Heavier pieces (degradations, transforms, samplers) are imported from their own modules.
"""

from ftclip.data.images import IMAGE_EXTENSIONS, check_images, read_image
from ftclip.data.iqa import IQA_FORMATS, IqaSample, detect_iqa_format, iqa_summary, list_images, load_iqa_dataset
from ftclip.data.reid import REID_FORMATS, ReidDataset, ReidSample, detect_reid_format, load_reid_dataset
from ftclip.data.synthetic import write_synthetic_iqa, write_synthetic_reid

__all__ = [
    "IMAGE_EXTENSIONS",
    "IQA_FORMATS",
    "REID_FORMATS",
    "IqaSample",
    "ReidDataset",
    "ReidSample",
    "check_images",
    "detect_iqa_format",
    "detect_reid_format",
    "iqa_summary",
    "list_images",
    "load_iqa_dataset",
    "load_reid_dataset",
    "read_image",
    "write_synthetic_iqa",
    "write_synthetic_reid",
]
