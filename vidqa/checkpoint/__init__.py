"""Checkpoints: finding and reading them (``read``), the LLaVA layouts (``llava``), writing them (``export``)."""

from vidqa.checkpoint.export import llava_config, prefixed, write_checkpoint, write_tower  # noqa: F401
from vidqa.checkpoint.llava import (COMPRESSOR, MM_KEYS, PREFUSION, PROJECTOR, SAVER_KEYS,  # noqa: F401
                                    VISION_TOWER, llm_config, load_llm, load_projector, load_vision)
from vidqa.checkpoint.read import (BUILTIN, KNOWN_MODEL_TYPES, builtin_dir, detect_method,  # noqa: F401
                                   fingerprint, load_tensors, load_tokenizer, quiet_transformers, read_config,
                                   resolve, weight_files, weight_map)
