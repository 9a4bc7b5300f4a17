"""``vidqa serve``: a resident engine (``engine``) behind an OpenAI-compatible HTTP API (``app``), run by
uvicorn (``server``); requests are parsed by ``schema``; ``compile`` keeps torch.compile's artifacts."""
