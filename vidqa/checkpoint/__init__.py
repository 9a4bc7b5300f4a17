"""Checkpoints: finding and reading them (``read``), the LLaVA layouts (``llava``)."""

from vidqa.checkpoint.llava import load_llm, load_projector, load_vision  # noqa: F401
from vidqa.checkpoint.read import (BUILTIN, KNOWN_MODEL_TYPES, MM_KEYS, builtin_dir, detect_method,  # noqa: F401
                                   llm_config, load_tensors, load_tokenizer, quiet_transformers, read_config,
                                   resolve, weight_files)
