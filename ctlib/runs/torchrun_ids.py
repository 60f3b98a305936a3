"""Run ids of a notebook run launched by ``torchrun`` (one ``ctlib run`` per rank, on one or several nodes).

Every rank executes the notebook; its training cell joins the process group (``ctlib.train.loop.train``), so
the ranks train one DDP model and only rank 0 writes checkpoints. Their run ids must agree without talking to
each other: the base id is ``--run-id`` or, without it, ``<notebook>_<rendezvous id>`` (``--rdzv-id``, the
same on every node). Rank 0 records the run under the base id, rank r > 0 under ``<base>-rank<r>``. When
torchrun restarts the workers (``--max-restarts``, after a member was killed) the attempt n gets
``<base>-restart<n>`` and, when the notebook declares ``resume_run_id`` and the attempt before left a
checkpoint (rank 0's run folder, on a filesystem the nodes share), continues from it (``ctlib.train.resume``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from ctlib.runs.context import has_checkpoint, short_name


def under_torchrun(env: Mapping[str, str] | None = None) -> bool:
    """Whether this process is a worker of a ``torchrun`` job of more than one process."""
    env = os.environ if env is None else env
    return int(env.get("WORLD_SIZE", "1") or 1) > 1 and "TORCHELASTIC_RESTART_COUNT" in env


def torchrun_run_id(
    run_id: str | None, notebook_stem: str, declares_resume: bool, env: Mapping[str, str] | None = None
) -> tuple[str, dict[str, str]]:
    """This rank's run id and the overrides a restarted attempt needs (``resume_run_id``)."""
    env = os.environ if env is None else env
    base = run_id
    if not base:
        rendezvous = env.get("TORCHELASTIC_RUN_ID", "")
        if rendezvous in ("", "none"):
            raise ValueError(
                "under torchrun, name the run: --run-id ID, or torchrun --rdzv-id ID (the same on every node)"
            )
        base = f"{short_name(notebook_stem)}_{rendezvous}"
    attempt, rank = int(env.get("TORCHELASTIC_RESTART_COUNT", "0")), int(env.get("RANK", "0"))

    def attempt_id(n: int) -> str:
        return base if n == 0 else f"{base}-restart{n}"

    this = attempt_id(attempt) + (f"-rank{rank}" if rank else "")
    overrides: dict[str, str] = {}
    if attempt and declares_resume:
        if has_checkpoint(attempt_id(attempt - 1)):
            overrides["resume_run_id"] = attempt_id(attempt - 1)
    return this, overrides
