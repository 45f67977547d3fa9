"""Layer 0: configs, registry, model zoo, run store, progress, Ray runtime."""
