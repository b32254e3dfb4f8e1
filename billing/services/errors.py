"""The one exception type of billing's expected refusals, shared by the services of every domain."""


class BillingError(Exception):
    """An expected refusal (a month not started, a finalized invoice): reported, never retried."""
