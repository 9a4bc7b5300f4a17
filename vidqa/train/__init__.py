"""`vidqa train`: learn VoCo-LLaMA or LLaVA-Mini compression, and make small demo models from scratch.

No VoCo-LLaMA weights exist, so a VoCo model has to be trained. Training runs the very functions that
inference runs (``vidqa.train.inputs`` says which, per variant). Several GPUs:
``torchrun --nproc-per-node N -m vidqa train`` (demo models: DistributedDataParallel; real runs: FSDP2).

- ``data``: ``Sample``, ``SyntheticData``, ``JsonData`` (LLaVA-style conversations), the word tokenizer.
- ``inputs``: one ``InputBuilder`` per variant (``voco``, ``mini``, ``full``, ``pool``) and their registry.
- ``model``: ``Learner`` (vision + projector + LLM + the variant's builder, and the loss), ``build_tiny``.
- ``loop``: ``TrainConfig``, ``train``, ``evaluate``, the learning-rate schedule, save and resume.
- ``export``: a trained Learner as a checkpoint vidqa loads (``export_voco``: a real run, LLaVA-1.5/VoCo layout).
- ``state``: training state as safetensors + JSON (torch.distributed.checkpoint's HF storage); no pickle.
- real VoCo runs (``vidqa train --base``): ``base`` (LLaVA-1.5, llava-hf, or LLM + tower + projector;
  ``<voco>`` added), ``stream`` (image/video instruction JSON decoded in DataLoader workers), ``scale``
  (FSDP2, LoRA, accumulation, the loop and its logs).
"""

from vidqa.train.data import (DataError, JsonData, Sample, SyntheticData, load_batch, make_word_tokenizer,
                              template_words)
from vidqa.train.export import export
from vidqa.train.inputs import (BUILDERS, FullInputs, InputBuilder, MiniInputs, PoolInputs, VoCoInputs, builder_class,
                                stack_rows)
from vidqa.train.loop import TrainConfig, evaluate, learning_rate, progress, train
from vidqa.train.model import Learner, TinyConfig, build_tiny, load_vision_from

__all__ = [
    "DataError", "JsonData", "Sample", "SyntheticData", "load_batch", "make_word_tokenizer", "template_words",
    "export",
    "BUILDERS", "FullInputs", "InputBuilder", "MiniInputs", "PoolInputs", "VoCoInputs", "builder_class", "stack_rows",
    "TrainConfig", "evaluate", "learning_rate", "progress", "train",
    "Learner", "TinyConfig", "build_tiny", "load_vision_from",
]
