"""The MultiMail API on its own, without Prefect: a typed client, its models and errors, and
provisioning an account to match settings.toml."""

from .client import (
    MailboxNotFoundError,
    MultiMailAPIError,
    MultiMailClient,
    MultiMailError,
    MultiMailResponseError,
)

__all__ = [
    "MailboxNotFoundError",
    "MultiMailAPIError",
    "MultiMailClient",
    "MultiMailError",
    "MultiMailResponseError",
]
