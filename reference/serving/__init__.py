"""Model serving: a FastAPI reference server with dynamic batching, an LRU model cache and
warm-up, plus launchers for real TorchServe and Triton serving the same model."""
