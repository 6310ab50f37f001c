"""Generic data pieces every task uses: image reading (one decode), CSV tables, samplers, resumable
loaders, transforms, the staged DataModule base and synthetic-set helpers. Task data (formats,
synthetic sets, augmentations of one task) lives in ``ftclip/tasks/<task>/``."""

from ftclip.data.images import IMAGE_EXTENSIONS, check_images, list_images, read_image

__all__ = ["IMAGE_EXTENSIONS", "check_images", "list_images", "read_image"]
