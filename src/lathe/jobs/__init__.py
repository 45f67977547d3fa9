"""Layer 4: Ray Train / Tune / Jobs. Importing a job module registers it."""
