"""Compression methods behind one interface (``base``): VoCo-LLaMA (``voco``), LLaVA-Mini (``mini``)."""
