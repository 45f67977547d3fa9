"""The macpo job package: config, engine actors, step manifest and the pipeline (registers "macpo")."""

from lathe.jobs.macpo.pipeline import MacpoJob, MacpoRun  # noqa: F401  (registers the job)
