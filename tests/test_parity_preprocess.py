"""Preprocessing and frame sampling at parity with the official pipelines (issue 14, items 1-4).

The reference values are computed here from the official code's documented rules, re-implemented in
plain numpy/PIL (not with vidqa's functions):

- LLaVA-1.5 / VoCo-LLaMA ``process_images`` with ``image_aspect_ratio: pad``: ``expand2square`` with
  ``tuple(int(x * 255) for x in image_mean)``, then the CLIP image processor.
- The CLIP image processor (transformers 4.37, what both official repos run): shortest edge to S and
  the other to ``int(S * long / short)`` with PIL bicubic on uint8, centre crop at
  ``((h - S) // 2, (w - S) // 2)``, rescale by 1/255, normalise.
- LLaVA-Mini's ``load_video``: ``F.interpolate(float frames, size=(S, S))`` (nearest: source index
  ``floor(i * float32(in / out))``), cast to uint8, then the CLIP processor (a no-op resize at S).
- LLaVA-Mini's ``get_seq_frames(total, n)`` with ``n = min(total, int(total // avg_fps))``.
"""

import numpy as np
import pytest
import torch
from PIL import Image

import media
from vidqa.framecache import FrameCache
from vidqa.generate import GenerationConfig
from vidqa.video import Sampling, VideoInfo, load_frames, plan
from vidqa.vision import normalise


# ---- the official rules, re-implemented -----------------------------------------------------------

def ref_expand2square(image: Image.Image, mean) -> Image.Image:
    width, height = image.size
    colour = tuple(int(x * 255) for x in mean)
    if width == height:
        return image
    side = max(width, height)
    canvas = Image.new(image.mode, (side, side), colour)
    canvas.paste(image, (0, (width - height) // 2) if width > height else ((height - width) // 2, 0))
    return canvas


def ref_clip_resize_crop(image: Image.Image, S: int) -> np.ndarray:
    width, height = image.size
    short, long = (width, height) if width <= height else (height, width)
    new_long = int(S * long / short)
    new_w, new_h = (S, new_long) if width <= height else (new_long, S)
    if (new_w, new_h) != image.size:
        image = image.resize((new_w, new_h), Image.BICUBIC)
    arr = np.asarray(image)
    top, left = (new_h - S) // 2, (new_w - S) // 2
    return arr[top:top + S, left:left + S]


def ref_normalise(arr: np.ndarray, mean, std) -> np.ndarray:
    x = (arr.astype(np.float64) * (1 / 255)).astype(np.float32)
    x = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return x.transpose(2, 0, 1)


def ref_nearest(frame: np.ndarray, S: int) -> np.ndarray:
    H, W = frame.shape[:2]

    def index(n_in):
        if n_in == S:
            return np.arange(S)
        scale = np.float32(n_in) / np.float32(S)
        return np.minimum(np.floor(np.arange(S, dtype=np.float32) * scale).astype(np.int64), n_in - 1)

    return frame.astype(np.float32)[index(H)][:, index(W)].astype(np.uint8)


def ref_get_seq_frames(total: int, n: int) -> list[int]:
    seg = float(total - 1) / n
    return [(int(np.round(seg * i)) + int(np.round(seg * (i + 1)))) // 2 for i in range(n)]


def textured(size=(640, 272), seed=0) -> np.ndarray:
    """A frame with detail at every scale: a gradient, edges and seeded noise."""
    w, h = size
    ys, xs = np.mgrid[0:h, 0:w]
    rng = np.random.default_rng(seed)
    img = np.stack([xs * 255 / w, ys * 255 / h, ((xs // 16 + ys // 16) % 2) * 200], -1)
    img = img + rng.normal(0, 30, img.shape)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def first_token(qa, cache) -> str:
    return "".join(qa.answer(cache, "what is shown?", GenerationConfig(max_new_tokens=1)))


def cache_from_pixels(qa, normalised: np.ndarray) -> FrameCache:
    with torch.inference_mode():
        feats = qa.vision(torch.from_numpy(normalised).to(qa.vision.dtype))
        out = qa.method.compress(feats)
    return FrameCache(qa.method.name, out, [0.0] * len(normalised), qa.method.tokens_per_frame, qa.cache_meta())


def spec_of(qa):
    return qa.vision.spec.size, qa.vision.spec.mean, qa.vision.spec.std


# ---- VoCo / LLaVA-1.5: pad with the mean colour, PIL bicubic on uint8 -----------------------------

def test_voco_image_pixels_and_first_token_equal_the_official(voco_qa, tmp_path):
    S, mean, std = spec_of(voco_qa)
    assert voco_qa.vision.spec.aspect == "pad"
    src = textured()
    path = tmp_path / "wide.png"
    Image.fromarray(src).save(path)
    frames = voco_qa.load_frames(path, Sampling())
    ref = ref_clip_resize_crop(ref_expand2square(Image.fromarray(src), mean), S)
    assert frames.pixels.shape == (1, S, S, 3)
    assert np.array_equal(frames.pixels[0], ref)  # exact: the official path is integer work
    normalised = normalise(torch.from_numpy(frames.pixels), voco_qa.vision.spec, torch.float32)
    assert torch.equal(normalised, torch.from_numpy(ref_normalise(ref, mean, std)[None]))
    ours = voco_qa.compress(frames)
    official = cache_from_pixels(voco_qa, ref_normalise(ref, mean, std)[None])
    for k in ours.tensors:
        assert torch.allclose(ours.tensors[k], official.tensors[k], rtol=1e-4, atol=1e-4)
    assert first_token(voco_qa, ours) == first_token(voco_qa, official)


def test_voco_video_frames_take_the_image_path(voco_qa, tmp_path):
    S, mean, std = spec_of(voco_qa)
    video = media.make_video(tmp_path / "v.mp4", num_frames=12, size=(96, 40), pattern="textured")
    sampling = Sampling(num_frames=3)
    assert voco_qa.resolve_sampling(sampling).rule == "midpoint"
    raw = load_frames(video, sampling, decoder="av")  # as decoded, full size
    fitted = voco_qa.load_frames(video, sampling, decoder="av")
    assert np.array_equal(fitted.indices, raw.indices)
    for got, frame in zip(fitted.pixels, raw.pixels):
        assert np.array_equal(got, ref_clip_resize_crop(ref_expand2square(Image.fromarray(frame), mean), S))


# ---- LLaVA-Mini: images by process_images, video frames by load_video -------------------------------

def test_mini_still_image_takes_the_config_image_path(mini_qa, tmp_path):
    S, mean, std = spec_of(mini_qa)
    # the tiny checkpoint says image_aspect_ratio "square": the CLIP processor as it is (shortest edge, crop)
    assert mini_qa.vision.spec.aspect == "crop"
    src = textured(seed=1)
    path = tmp_path / "wide.png"
    Image.fromarray(src).save(path)
    frames = mini_qa.load_frames(path, Sampling())
    ref = ref_clip_resize_crop(Image.fromarray(src), S)
    assert np.array_equal(frames.pixels[0], ref)
    ours = mini_qa.compress(frames)
    official = cache_from_pixels(mini_qa, ref_normalise(ref, mean, std)[None])
    assert torch.allclose(ours.tensors["vision_tokens"], official.tensors["vision_tokens"], rtol=1e-4, atol=1e-4)
    assert first_token(mini_qa, ours) == first_token(mini_qa, official)
    # the squash that vidqa used to apply to images gives other pixels
    squashed = np.asarray(Image.fromarray(src).resize((S, S), Image.BICUBIC))
    assert not np.array_equal(frames.pixels[0], squashed)


def test_mini_video_frames_sampling_and_pixels_equal_the_official(mini_qa, tmp_path):
    S, mean, std = spec_of(mini_qa)
    video = media.make_video(tmp_path / "v.mp4", num_frames=47, fps=10, size=(120, 52), pattern="textured")
    info = media.av.open(str(video)).streams.video[0]
    total, fps = info.frames, float(info.average_rate)
    want = ref_get_seq_frames(total, min(total, int(total // fps)))
    assert mini_qa.resolve_sampling(Sampling()).rule == "seq"
    frames = mini_qa.load_frames(video, Sampling(), decoder="av")  # the default: 1 fps, the method's rule
    assert frames.indices.tolist() == want
    raw = load_frames(video, decoder="av", indices=want)
    ref = np.stack([ref_nearest(f, S) for f in raw.pixels])
    assert np.array_equal(frames.pixels, ref)
    ours = mini_qa.compress(frames)
    official = cache_from_pixels(mini_qa, np.stack([ref_normalise(r, mean, std) for r in ref]))
    assert torch.allclose(ours.tensors["vision_tokens"], official.tensors["vision_tokens"], rtol=1e-4, atol=1e-4)
    assert first_token(mini_qa, ours) == first_token(mini_qa, official)


@pytest.mark.parametrize("total,fps,n", [(250, 30.0, 4), (250, 25.0, None), (301, 29.97, None), (3, 1.0, 3),
                                         (1000, 24.0, 7), (17, 2.0, None)])
def test_seq_rule_is_get_seq_frames(total, fps, n):
    info = VideoInfo("x.mp4", num_frames=total, fps=fps, duration=total / fps, width=8, height=8, is_image=False)
    got = plan(info, Sampling(fps=1, num_frames=n, rule="seq")).tolist()
    k = n if n is not None else max(1, min(total, int(total // fps)))
    assert got == sorted(set(ref_get_seq_frames(total, k)))


def test_seq_rule_issue_example_and_midpoint_still_available():
    info = VideoInfo("x.mp4", num_frames=250, fps=25.0, duration=10.0, width=8, height=8, is_image=False)
    assert plan(info, Sampling(num_frames=4, rule="seq")).tolist() == [31, 93, 155, 218]
    assert plan(info, Sampling(num_frames=4, rule="midpoint")).tolist() == [31, 93, 156, 218]
    assert plan(info, Sampling(num_frames=4)).tolist() == [31, 93, 156, 218]  # no model: midpoint


def test_preprocess_fast_is_on_purpose_and_close(voco_qa, mini_qa, tmp_path):
    """``--preprocess fast``: same geometry, torch antialiased bicubic; a few grey levels from official."""
    src = textured(seed=2)
    path = tmp_path / "wide.png"
    Image.fromarray(src).save(path)
    for qa in (voco_qa, mini_qa):
        official = qa.load_frames(path, Sampling()).pixels.astype(int)
        fast = qa.load_frames(path, Sampling(preprocess="fast"))
        assert fast.preprocess == "fast"
        diff = np.abs(fast.pixels.astype(int) - official)
        assert 0 < diff.max() <= 12 and diff.mean() < 1.0
        assert qa.resolve_sampling(Sampling(preprocess="fast")).preprocess == "fast"
    assert voco_qa.resolve_sampling(Sampling()).preprocess == "official"


def test_cache_settings_record_rule_and_preprocessing(mini_qa):
    from vidqa.library import cache_settings

    a = cache_settings(mini_qa, mini_qa.resolve_sampling(Sampling()))
    b = cache_settings(mini_qa, mini_qa.resolve_sampling(Sampling(preprocess="fast")))
    c = cache_settings(mini_qa, mini_qa.resolve_sampling(Sampling(rule="midpoint")))
    assert a["sampling"]["rule"] == "seq" and a["sampling"]["preprocess"] == "official"
    assert a != b and a != c
