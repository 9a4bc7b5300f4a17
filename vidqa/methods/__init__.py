"""Compression methods behind one interface and registry (``base``): VoCo-LLaMA (``voco``), LLaVA-Mini
(``mini``), the average-pooling baseline (``pool``). Look a method up with ``vidqa.methods.base.get_method``."""
