"""A stateful fake of the MultiMail REST API, for tests, the local demo and the tutorial.

`FakeMultiMail` runs it on a local port; `create_app` gives the ASGI app around a `FakeState`.
The fake's own controls (keys, inbound mail, faults, clock, reset, approval page) live under
`/_fake/`; everything under `/v1/` follows the MultiMail contract.
"""

from .app import create_app
from .server import FakeMultiMail
from .state import ApiError, FakeState
from .webhook_delivery import sign

__all__ = ["ApiError", "FakeMultiMail", "FakeState", "create_app", "sign"]
