"""A service run's trackers: the spec's `report_to` beside the database (core_distill/trackers), with the
service's team-wide defaults (app.settings: DISTILL_MLFLOW_TRACKING_URI, DISTILL_TRACKER_PROJECT, ...)."""

from __future__ import annotations

from typing import Any

from app.settings import get_settings


def tracker_options(run_id: int):
    from core_distill.trackers import TrackerOptions

    settings = get_settings()
    return TrackerOptions(project=settings.tracker_project, mlflow_tracking_uri=settings.mlflow_tracking_uri,
                          tensorboard_dir=settings.tensorboard_dir, wandb_mode=settings.wandb_mode,
                          finish_seconds=settings.tracker_finish_seconds,
                          tags={"distill.run_id": str(run_id)})  # fmt: skip


def train_tracked(spec, *, run_id: int, output_dir: str, reporter, **train_args: Any):
    """The engine's `train.run` reporting to `reporter` (the database) and the spec's trackers; the run is named
    `run-<id>` in each tracker."""
    from core_distill.trackers import run_with_trackers
    from core_distill.train import run as train

    return run_with_trackers(spec, output_dir, reporter,
                             lambda r: train(spec, output_dir=output_dir, reporter=r, **train_args),
                             run_name=f"run-{run_id}", options=tracker_options(run_id))  # fmt: skip
