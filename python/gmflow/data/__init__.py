"""ImageNet data: latent caching and the training dataset (docs/training.md#latent-caching,
docs/training.md#training-data).

=====================  =====================================================================
``imagenet``           list files, class names, the ADM center crop
``cache``              ``cache_latents``: images -> SD-VAE posterior samples x 0.18215, one
                       ``.pth`` per image, resumable, sharded over torchrun ranks
``dataset``            ``LatentDataset`` (label dropout to the null class), ``EpochBatchSampler``
                       (deterministic per-iteration batches: exact resume)
=====================  =====================================================================
"""

from .cache import CacheResult, cache_latents, cache_path, image_key, load_vae_for_caching
from .dataset import EpochBatchSampler, LatentDataset, ResumedBatches, hash_uniform
from .imagenet import ListEntry, adm_center_crop, image_to_array, read_class_names, read_list_file, write_list_file

__all__ = [
    "CacheResult",
    "EpochBatchSampler",
    "LatentDataset",
    "ListEntry",
    "ResumedBatches",
    "adm_center_crop",
    "cache_latents",
    "cache_path",
    "hash_uniform",
    "image_key",
    "image_to_array",
    "load_vae_for_caching",
    "read_class_names",
    "read_list_file",
    "write_list_file",
]
