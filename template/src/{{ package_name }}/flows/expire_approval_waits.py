"""`expire-approval-waits`: wake the flow runs whose approval wait is over."""

from __future__ import annotations

from prefect import flow, get_run_logger

from ..namespace import EXPIRE_APPROVAL_WAITS, flow_name
from ..oversight.approvals import resume_settled_waits


@flow(name=flow_name(EXPIRE_APPROVAL_WAITS))
async def expire_approval_waits() -> list[str]:
    """Wake the runs suspended on a decision that is over: decided while no webhook reached
    the receiver (it was down longer than MultiMail's retries), or pending for longer than
    approval_timeout_seconds, in which case the run cancels its email and reports `timed_out`.

    Scheduled every 2 minutes in prefect.yaml and by `serve`, so a decision the receiver
    missed continues its run within minutes, not at the approval timeout.
    """
    resumed = await resume_settled_waits()
    if resumed:
        get_run_logger().info("Resumed %d settled approval wait(s): %s", len(resumed), resumed)
    return resumed
