"""``vidqa bench``: accuracy and efficiency on MSRVTT-QA, MSVD-QA, ActivityNet-QA and synthetic sets.

Every QA pair is answered from the compressed per-frame caches: each video is compressed once (or
found in the cache store, e.g. after ``vidqa index``) and serves all its questions.

- ``datasets``: annotation formats, the video index and name variants, ``load_dataset``.
- ``metrics``: ``normalize``, ``exact_match``, ``contains``, ``score`` (the rule is documented there).
- ``judge``: the optional GPT judge (Video-ChatGPT protocol) and its disk cache.
- ``files``: the run folder's files: resumable prediction files, ``run.json``, atomic JSON.
- ``run``: selection and shards, answering every question, torchrun done markers.
- ``report``: the report built from every prediction file (merge), and its closing table.
"""

from vidqa.bench.datasets import (ACTIVITYNET_TYPES, DATASETS, SPECS, SPLITS, Dataset, DatasetNotFound, Item, Spec,
                                  VideoIndex, find_annotations, load_dataset, name_variants, not_found)
from vidqa.bench.files import (RESUME_KEYS, PredictionWriter, check_run_settings, part_name, read_records,
                               read_settings, repair_tail, write_json_atomic)
from vidqa.bench.judge import (DEFAULT_JUDGE_URL, JUDGE_PROTOCOL, JUDGE_SYSTEM, JUDGE_USER, Judge, JudgeError,
                               judge_messages, judge_records, parse_judgement)
from vidqa.bench.metrics import contains, exact_match, normalize, score
from vidqa.bench.report import build_report, collect_records, render_table, report_for, write_judgements
from vidqa.bench.run import (DEFAULT_PROMPT, OFFICIAL_PROMPTS, RunSummary, answer_all, check_prompt, default_out, done_ids,
                             group_by_video, marker_path, parse_shard, peak_gpu_memory, render_prompt, run_settings,
                             select, shard_of, todo_count, wait_for_shards, write_marker, official_prompt,
                             model_prompt, resolve_prompt)

__all__ = [
    "ACTIVITYNET_TYPES", "DATASETS", "SPECS", "SPLITS", "Dataset", "DatasetNotFound", "Item", "Spec", "VideoIndex",
    "find_annotations", "load_dataset", "name_variants", "not_found",
    "RESUME_KEYS", "PredictionWriter", "check_run_settings", "part_name", "read_records", "read_settings",
    "repair_tail", "write_json_atomic",
    "DEFAULT_JUDGE_URL", "JUDGE_PROTOCOL", "JUDGE_SYSTEM", "JUDGE_USER", "Judge", "JudgeError", "judge_messages",
    "judge_records", "parse_judgement",
    "contains", "exact_match", "normalize", "score",
    "build_report", "collect_records", "render_table", "report_for", "write_judgements",
    "DEFAULT_PROMPT", "OFFICIAL_PROMPTS", "official_prompt", "model_prompt", "resolve_prompt", "RunSummary", "answer_all", "check_prompt", "default_out", "done_ids", "group_by_video",
    "marker_path", "parse_shard", "peak_gpu_memory", "render_prompt", "run_settings", "select", "shard_of",
    "todo_count", "wait_for_shards", "write_marker",
]
