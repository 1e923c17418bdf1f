"""One process (rank) of a multi-GPU run: `python -m worker.rank_main RUN_ID --attempt N`, started by
the torch launcher from the run's worker task (worker/tasks.py `run_gang`).

Every rank loads the run's spec from the database and calls the engine's `train.run`. Rank 0
reports (DatabaseReporter: metrics, heartbeat, the cancel flag, which the engine broadcasts to
the other ranks) and records success, cancel or hand-back; the others report nothing. A rank that
raises writes its error to DISTILL_RANK_ERROR_DIR/rank<R>.txt for the supervising task, which marks
the run failed with the first such error. SIGTERM (worker shutdown): rank 0 checkpoints at the
next step and hands the run back; the other ranks ignore it and follow rank 0's stop.
"""

from __future__ import annotations

import argparse
import os
import signal
from pathlib import Path

from sqlmodel import Session

from app.db import get_engine
from app.lifeline import die_with_parent
from app.models import Experiment, Run
from worker.launch import HOST_ENV
from worker.tasks import after_training, close_quietly, describe_error, prepare, record_outcome


def main(argv: list[str] | None = None) -> int:
    die_with_parent()  # the launcher gone (killed with its worker): this rank goes too
    parser = argparse.ArgumentParser(prog="worker.rank_main")
    parser.add_argument("run_id", type=int)
    parser.add_argument("--attempt", type=int, required=True)
    args = parser.parse_args(argv)
    rank = int(os.environ.get("RANK", "0"))
    engine = get_engine()
    reporter = None
    try:
        with Session(engine) as session:
            run = session.get(Run, args.run_id)
            spec_data, output_dir = dict(session.get(Experiment, run.experiment_id).spec), run.output_dir
        if rank == 0:
            spec, reporter = prepare(args.run_id, attempt=args.attempt, spec_data=spec_data, engine=engine)
            signal.signal(signal.SIGTERM, lambda *_: setattr(reporter, "interrupted", True))
        else:
            from core_distill.reporting import NullReporter
            from core_distill.spec import DistillSpec

            spec = DistillSpec.parse(spec_data)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)  # rank 0's stop reaches this rank through the engine
        from core_distill.train import run as train

        if reporter is not None:  # rank 0: the database and the spec's trackers
            from worker.trackers import train_tracked

            result = train_tracked(spec, run_id=args.run_id, output_dir=output_dir, reporter=reporter, resume=True,
                                   progress=False)  # fmt: skip
        else:
            result = train(spec, output_dir=output_dir, reporter=NullReporter(), resume=True, progress=False)
        from core_distill.distributed import shutdown

        shutdown()
        if reporter is not None:
            after_training(spec, result, reporter, run_id=args.run_id, output_dir=output_dir, engine=engine)
            host = os.environ.get(HOST_ENV, "")
            print(record_outcome(args.run_id, attempt=args.attempt, result=result, reporter=reporter,
                                 engine=engine, host=host), flush=True)  # fmt: skip
        return 0
    except BaseException as exc:  # noqa: BLE001  (tell the supervising task, then fail this rank)
        if reporter is not None:
            close_quietly(reporter)
        error_dir = os.environ.get("DISTILL_RANK_ERROR_DIR")
        if error_dir:
            Path(error_dir, f"rank{rank}.txt").write_text(describe_error(exc))
        raise


if __name__ == "__main__":
    from core_distill.distributed import exit_rank

    exit_rank(main())
