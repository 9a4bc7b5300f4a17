"""The QA sets ``vidqa bench`` reads: MSRVTT-QA, MSVD-QA, ActivityNet-QA and synthetic sets.

Annotation formats (detected, any dataset; ``SPLIT`` is ``test`` or ``val``)
------------------------------------------------------------------------------
1. ``SPLIT_qa.json``: a list of ``{"question", "answer", "id", "video_id", "category_id"}``; ``video_id``
   is an int (7010) or a name (``video7010``). MSRVTT-QA and MSVD-QA (Xu et al. 2017); synthetic sets.
2. ``SPLIT_q.json`` ``{"video_name", "question", "question_id"}`` + ``SPLIT_a.json`` ``{"answer",
   "question_id"}`` (optionally ``"type"``): the Video-ChatGPT / Video-LLaVA / LLaVA-Mini form, and
   ActivityNet-QA's own release. Answers are joined on ``question_id`` (on position when ids are absent).
3. A CSV (``SPLIT.csv``, ``SPLIT_qa.csv``, ... any CSV whose name has the split as a word) with
   ``video_name``, ``question``, ``answer``, ``question_id`` columns (``video_id``/``id``/``category_id``/
   ``type`` are accepted too).

They are looked for in the data folder and its subfolders (two levels down); the shallowest wins, and
format 1 is preferred over 2 over 3 when several are present.

Videos are found by name anywhere under the data folder (four levels down): the annotation's name as
is, with or without a ``video``/``vid`` prefix for numbers (``7010`` = ``video7010``), with or without
ActivityNet's ``v_`` prefix, through MSVD's ``youtube_mapping.txt`` (``vid1201`` -> its YouTube clip
name), with any video extension. When several files match, the one in the data folder itself wins,
then ``videos/all/``, ``videos/``, ``video/``, ``all/``, ``YouTubeClips/``, ``TestVideo/``, ``test/``,
``val/``, then any other folder; and ``.mp4`` before ``.mkv``, ``.webm``, ``.avi``, then the rest.
"""

from __future__ import annotations

import csv
import json
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from vidqa.bench.metrics import normalize
from vidqa.errors import VidqaError
from vidqa.library import VIDEO_EXTENSIONS

DATASETS = ("msrvtt", "msvd", "activitynet", "synthetic")
SPLITS = ("test", "val")


class DatasetNotFound(VidqaError):
    """No annotations (or no videos at all) under the data folder."""


@dataclass(frozen=True)
class Item:
    id: str
    video: str  # the video's name as the annotation gives it
    question: str
    answer: str
    category: int | str | None = None


@dataclass(frozen=True)
class Spec:
    title: str
    expected: str  # the layout, for the not-found message
    source: str  # where people get it
    category_names: dict[int, str] | None = None  # None: named after the questions' wh-word


ACTIVITYNET_TYPES = {0: "motion", 1: "spatial", 2: "temporal", 3: "yes/no", 4: "color", 5: "object",
                     6: "location", 7: "number", 8: "other"}  # MILVLG/activitynet-qa dataset/README.md

SPECS = {
    "msrvtt": Spec(
        "MSRVTT-QA",
        "expected {split}_qa.json (or {split}_q.json + {split}_a.json, or a CSV with video_name, question, answer, "
        "question_id) and the videos video7010.mp4 ... under it, videos/ or videos/all/",
        "get the QA from the MSRVTT-QA release (Xu et al. 2017, github.com/xudejing/video-question-answering) or "
        "the Video-LLaVA eval bundle (GPT_Zero_Shot_QA/MSRVTT_Zero_Shot_QA), the videos from MSR-VTT (Xu et al. 2016)"),
    "msvd": Spec(
        "MSVD-QA",
        "expected {split}_qa.json (+ youtube_mapping.txt when video_id is a number) or {split}_q.json + "
        "{split}_a.json, and the clips YouTubeClips/*.avi",
        "get the QA from the MSVD-QA release (Xu et al. 2017, github.com/xudejing/video-question-answering) or "
        "the Video-LLaVA eval bundle (GPT_Zero_Shot_QA/MSVD_Zero_Shot_QA), the clips from the MSR Video Description "
        "Corpus (YouTubeClips.tar)"),
    "activitynet": Spec(
        "ActivityNet-QA",
        "expected {split}_q.json + {split}_a.json and the videos v_<video_name>.mp4|mkv|webm under it or videos/",
        "get the QA from github.com/MILVLG/activitynet-qa (Yu et al. 2019), the videos from ActivityNet v1.3",
        ACTIVITYNET_TYPES),
    "synthetic": Spec(
        "the synthetic set",
        "expected {split}_qa.json (MSRVTT-QA format) and its videos, videos/synthNNNNN.mp4",
        "make it with: python -m vidqa.synthetic DIR --videos 200 --seed 0"),
}

VIDEO_EXT_ORDER = (".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v")
PREFERRED_DIRS = ("", "videos/all", "videos", "video", "all", "youtubeclips", "testvideo", "test", "val")
ANNOTATION_DEPTH = 2
VIDEO_DEPTH = 4
WH_WORDS = ("what", "who", "how", "when", "where", "why", "which", "whose", "whom", "is", "are", "does", "do")


def _walk(root: Path, depth: int) -> Iterable[tuple[Path, list[str]]]:
    """(folder, file names) for root and its non-hidden subfolders, ``depth`` levels down, sorted."""
    stack = [(root, 0)]
    while stack:
        folder, level = stack.pop()
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError:
            continue
        files, dirs = [], []
        for e in entries:
            if e.name.startswith("."):
                continue
            try:
                if e.is_dir():
                    dirs.append(Path(e.path))
                elif e.is_file():
                    files.append(e.name)
            except OSError:
                continue
        yield folder, files
        if level < depth:
            stack.extend((d, level + 1) for d in reversed(dirs))


class VideoIndex:
    """Every video file under a folder, by stem; resolves annotation names through their variants."""

    def __init__(self, root: Path, mapping: dict[str, str] | None = None):
        self.root = root
        self.mapping = mapping or {}
        exts = VIDEO_EXTENSIONS
        self.by_stem: dict[str, list[Path]] = {}
        for folder, names in _walk(root, VIDEO_DEPTH):
            for name in names:
                p = Path(name)
                if p.suffix.lower() in exts:
                    self.by_stem.setdefault(p.stem, []).append(folder / name)
        self.by_lower: dict[str, list[Path]] = {}
        for stem, paths in self.by_stem.items():
            self.by_lower.setdefault(stem.lower(), []).extend(paths)
        self._memo: dict[str, Path | None] = {}

    def __len__(self) -> int:
        return sum(len(v) for v in self.by_stem.values())

    def _rank(self, path: Path) -> tuple:
        rel = path.parent.relative_to(self.root).as_posix().lower()
        rel = "" if rel == "." else rel
        where = PREFERRED_DIRS.index(rel) if rel in PREFERRED_DIRS else len(PREFERRED_DIRS) + rel.count("/")
        ext = path.suffix.lower()
        return (where, VIDEO_EXT_ORDER.index(ext) if ext in VIDEO_EXT_ORDER else len(VIDEO_EXT_ORDER), str(path))

    def variants(self, name: Any) -> list[str]:
        return name_variants(name, self.mapping)

    def find(self, name: Any) -> Path | None:
        key = str(name)
        if key not in self._memo:
            found = None
            for table, fold in ((self.by_stem, False), (self.by_lower, True)):
                for v in self.variants(name):
                    paths = table.get(v.lower() if fold else v)
                    if paths and (not fold or len({p.stem for p in paths}) == 1):  # case-folded: unambiguous only
                        found = min(paths, key=self._rank)
                        break
                if found:
                    break
            self._memo[key] = found
        return self._memo[key]


def name_variants(name: Any, mapping: dict[str, str] | None = None) -> list[str]:
    """The file stems an annotation's video name may have on disk, most likely first."""
    base = str(name).strip()
    suffix = Path(base).suffix.lower()
    if suffix and suffix in VIDEO_EXTENSIONS:
        base = base[: -len(suffix)]
    base = base.replace("\\", "/").rsplit("/", 1)[-1]
    out = [base]
    m = re.fullmatch(r"(?:video|vid)(\d+)", base)
    if base.isdigit():
        out += [f"video{base}", f"vid{base}"]
    elif m:
        out += [f"video{m[1]}", m[1], f"vid{m[1]}"]
    out += [base[2:]] if base.startswith("v_") else [f"v_{base}"]
    if mapping:
        out += [mapping[v] for v in list(out) if v in mapping]
    seen: dict[str, None] = {}
    for v in out:
        if v:
            seen.setdefault(v, None)
    return list(seen)


@dataclass
class Dataset:
    name: str
    title: str
    root: Path
    split: str
    format: str  # "qa.json", "q+a.json" or "csv"
    files: list[str]
    items: list[Item]
    videos: VideoIndex
    category_names: dict[Any, str] = field(default_factory=dict)

    def video_path(self, video: str) -> Path | None:
        return self.videos.find(video)

    def category_name(self, category: Any) -> str | None:
        if category is None:
            return None
        return self.category_names.get(category, f"category {category}")


def _read_json(path: Path) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise VidqaError(f"cannot read {path}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")


def _records(data: Any, path: Path) -> list[dict]:
    if isinstance(data, dict):  # {id: record} maps appear in some re-releases
        data = [dict(v, **({} if "question_id" in v else {"question_id": k})) if isinstance(v, dict) else v
                for k, v in data.items()]
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise VidqaError(f"{path} is not a list of JSON objects")
    return data


def _first(record: dict, *keys: str) -> Any:
    for k in keys:
        if k in record and record[k] not in (None, ""):
            return record[k]
    return None


def _category(value: Any) -> int | str | None:
    if value is None or value == "":
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return str(value)


def _unique_ids(items: list[Item]) -> list[Item]:
    seen: Counter = Counter()
    out = []
    for it in items:
        seen[it.id] += 1
        out.append(it if seen[it.id] == 1 else Item(f"{it.id}#{seen[it.id]}", it.video, it.question, it.answer,
                                                  it.category))
    return out


def _make_items(rows: list[dict], path: Path) -> list[Item]:
    items = []
    for n, r in enumerate(rows):
        video = _first(r, "video_name", "video_id", "video", "vid_id", "video_path")
        question, answer = _first(r, "question", "q", "Q"), _first(r, "answer", "a", "A")
        if video is None or question is None or answer is None:
            raise VidqaError(f"{path}: entry {n} lacks video/question/answer ({', '.join(sorted(r))})")
        qid = _first(r, "question_id", "id", "qid")
        items.append(Item(str(qid) if qid is not None else f"{video}#{n}", str(video), str(question).strip(),
                          str(answer).strip(), _category(_first(r, "category_id", "type", "category"))))
    return _unique_ids(items)


def _load_qa_json(path: Path) -> list[Item]:
    return _make_items(_records(_read_json(path), path), path)


def _load_q_a_json(q_path: Path, a_path: Path) -> list[Item]:
    questions = _records(_read_json(q_path), q_path)
    answers = _records(_read_json(a_path), a_path)
    by_id = {str(a["question_id"]): a for a in answers if a.get("question_id") is not None}
    rows = []
    for n, q in enumerate(questions):
        qid = q.get("question_id")
        a = by_id.get(str(qid)) if qid is not None else None
        if a is None:
            if qid is not None and by_id:
                raise VidqaError(f"{a_path} has no answer for question_id {qid} of {q_path}")
            if n >= len(answers):
                raise VidqaError(f"{a_path} has fewer answers ({len(answers)}) than {q_path} has questions")
            a = answers[n]  # no ids: the Video-LLaVA loader's join, by position
        row = {**{k: v for k, v in a.items() if k != "question_id"}, **q}
        rows.append(row)
    return _make_items(rows, q_path)


def _load_csv(path: Path) -> list[Item]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = [{(k or "").strip().lower(): (v or "").strip() for k, v in r.items()} for r in csv.DictReader(f)]
    except (OSError, csv.Error, UnicodeDecodeError) as e:
        raise VidqaError(f"cannot read {path}: {e}")
    return _make_items(rows, path)


def _csv_header(path: Path) -> set[str]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            return {h.strip().lower() for h in next(csv.reader(f), [])}
    except (OSError, csv.Error, UnicodeDecodeError):
        return set()


def _youtube_mapping(root: Path) -> dict[str, str]:
    """MSVD's ``youtube_mapping.txt`` (``<clip name> vid<N>`` per line), as vidN -> clip name."""
    for folder, names in _walk(root, ANNOTATION_DEPTH):
        if "youtube_mapping.txt" in names:
            mapping = {}
            for line in (folder / "youtube_mapping.txt").read_text(encoding="utf-8", errors="replace").splitlines():
                parts = line.split()
                if len(parts) == 2:
                    mapping[parts[1]] = parts[0]
            return mapping
    return {}


def _summary_categories(annotation: Path, split: str) -> dict[Any, str]:
    """Category names a generator wrote beside its annotations (``vidqa.synthetic``): ``SPLIT_summary.json``
    with ``"category_names": {"N": name}`` or ``"categories": {name: {"id": N, ...}}``."""
    path = annotation.parent / f"{split}_summary.json"
    try:
        summary = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    names: dict[Any, str] = {}
    if not isinstance(summary, dict):
        return names
    for source in (summary.get("categories"), summary.get("category_names")):
        if isinstance(source, dict):
            for k, v in source.items():
                if isinstance(v, dict) and "id" in v:
                    names[_category(v["id"])] = str(k)
                elif isinstance(v, str):
                    names[_category(k)] = v
    return names


def _category_names(name: str, items: list[Item], annotation: Path, split: str) -> dict[Any, str]:
    spec = SPECS[name]
    cats = {it.category for it in items if it.category is not None}
    if not cats:
        return {}
    known = spec.category_names or _summary_categories(annotation, split)
    if known:
        return {c: known.get(c, str(c) if isinstance(c, str) else f"category {c}") for c in cats}
    # MSRVTT-QA / MSVD-QA: each category is one question word; name each after its questions' first word
    # when that is a wh-word, a clear majority, and different for every category; else "category N"
    words: dict[Any, Counter] = {}
    for it in items:
        if it.category is not None:
            first = normalize(it.question).split()[:1]
            words.setdefault(it.category, Counter())[first[0] if first else ""] += 1
    names: dict[Any, str] = {}
    for c in cats:
        if isinstance(c, str):
            names[c] = c
            continue
        word, count = min(words[c].items(), key=lambda kv: (-kv[1], kv[0]))
        names[c] = word if word in WH_WORDS and count > 0.5 * sum(words[c].values()) else ""
    labels = [v for c, v in names.items() if not isinstance(c, str)]
    if "" in labels or len(set(labels)) != len(labels):
        names = {c: (c if isinstance(c, str) else f"category {c}") for c in cats}
    return names


def find_annotations(root: Path, split: str) -> tuple[str, list[Path]] | None:
    """The annotation files of a split under root: ``(format, files)``, or None."""
    found: dict[str, list[tuple[int, Path]]] = {"qa.json": [], "q+a.json": [], "csv": []}
    split_word = re.compile(rf"(^|[^a-z0-9]){split}([^a-z0-9]|$)")
    for folder, names in _walk(root, ANNOTATION_DEPTH):
        depth = len(folder.relative_to(root).parts)
        lower = {n.lower(): n for n in names}
        if f"{split}_qa.json" in lower:
            found["qa.json"].append((depth, folder / lower[f"{split}_qa.json"]))
        if f"{split}_q.json" in lower and f"{split}_a.json" in lower:
            found["q+a.json"].append((depth, folder / lower[f"{split}_q.json"]))
        for low, n in lower.items():
            if low.endswith(".csv") and split_word.search(low[:-4]):
                header = _csv_header(folder / n)
                if {"question", "answer"} <= header and header & {"video_name", "video_id", "video"}:
                    found["csv"].append((depth, folder / n))
    for fmt in ("qa.json", "q+a.json", "csv"):
        if found[fmt]:
            depth, path = min(found[fmt], key=lambda dp: (dp[0], str(dp[1])))
            if fmt == "q+a.json":
                lower = {p.name.lower(): p for p in path.parent.iterdir()}
                return fmt, [path, lower[f"{split}_a.json"]]
            return fmt, [path]
    return None


def not_found(name: str, root: Path, split: str, what: str | None = None) -> DatasetNotFound:
    spec = SPECS[name]
    head = f"{spec.title} not found under {root}" + (f" ({what})" if what else "")
    return DatasetNotFound(f"{head}: {spec.expected.format(split=split)}; {spec.source}")


def load_dataset(name: str, root: str | os.PathLike, split: str = "test") -> Dataset:
    """Read a dataset's annotations (format detected) and index its videos; DatasetNotFound if absent."""
    if name not in SPECS:
        raise VidqaError(f"unknown dataset {name!r} (use {', '.join(DATASETS)})", exit_code=2)
    if split not in SPLITS:
        raise VidqaError(f"unknown split {split!r} (use {' or '.join(SPLITS)})", exit_code=2)
    root = Path(root).expanduser()
    if not root.is_dir():
        raise not_found(name, root, split, "no such folder")
    root = root.resolve()
    hit = find_annotations(root, split)
    if hit is None:
        raise not_found(name, root, split, f"no {split} annotations")
    fmt, files = hit
    if fmt == "qa.json":
        items = _load_qa_json(files[0])
    elif fmt == "q+a.json":
        items = _load_q_a_json(files[0], files[1])
    else:
        items = _load_csv(files[0])
    if not items:
        raise VidqaError(f"{files[0]} holds no questions")
    videos = VideoIndex(root, _youtube_mapping(root))
    ds = Dataset(name, SPECS[name].title, root, split, fmt, [str(f) for f in files], items, videos,
                 _category_names(name, items, files[0], split))
    if len(videos) == 0 or not any(ds.video_path(v) for v in dict.fromkeys(it.video for it in items)):
        raise not_found(name, root, split, f"annotations at {files[0]}, but none of their videos")
    return ds


