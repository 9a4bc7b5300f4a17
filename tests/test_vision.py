"""vidqa.vision: the truncated CLIP tower."""

import torch


def test_vision_encoder_same_features_with_and_without_grad():
    """Inference runs vidqa.fast.encoder, training the transformers layers: the same features."""
    from transformers import CLIPVisionConfig, CLIPVisionModel

    from vidqa.vision import Preprocess, VisionEncoder

    cfg = CLIPVisionConfig(hidden_size=48, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
                           image_size=28, patch_size=7, hidden_act="quick_gelu")
    torch.manual_seed(0)
    enc = VisionEncoder(CLIPVisionModel(cfg).eval(), -2, "patch", Preprocess(size=28))
    x = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        fast = enc(x)
    slow = enc(x)
    assert slow.requires_grad and (fast - slow.detach()).abs().max() < 1e-5
