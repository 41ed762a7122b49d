"""Human oversight: a flow waits for the decision on a held email, by polling or suspended.

    from <your package>.oversight import await_delivery

`approvals.py` waits and resumes; the decisions themselves arrive through the webhook receiver
(`inbound/receiver.py`) or the `expire-approval-waits` flow.
"""

from .approvals import WaitMode, await_delivery

__all__ = ["WaitMode", "await_delivery"]
