"""The cost of one request, from its tokens and the price in force. Pure: no ORM, no I/O.

Token counts follow our UsageRecord convention: `input_tokens` is the whole prompt, of which
`cached_input_tokens` were read from the provider's cache and `cache_write_tokens` written to
it. The rest is billed at the input price. Nothing is rounded here (docs/design.md#money).
"""

from dataclasses import dataclass
from decimal import Decimal

ONE_MILLION = Decimal(1_000_000)


@dataclass(frozen=True, slots=True)
class Price:
    input_per_1m: Decimal
    output_per_1m: Decimal
    cached_input_per_1m: Decimal | None = None
    cache_write_per_1m: Decimal | None = None


@dataclass(frozen=True, slots=True)
class Tokens:
    input: int = 0
    output: int = 0
    cached_input: int = 0
    cache_write: int = 0

    def __post_init__(self) -> None:
        if min(self.input, self.output, self.cached_input, self.cache_write) < 0:
            raise ValueError("token counts cannot be negative")
        if self.cached_input + self.cache_write > self.input:
            raise ValueError("cached and cache-write tokens are part of the input tokens")


def request_cost(*, tokens: Tokens, price: Price) -> Decimal:
    cached_price = price.input_per_1m if price.cached_input_per_1m is None else price.cached_input_per_1m
    write_price = price.input_per_1m if price.cache_write_per_1m is None else price.cache_write_per_1m
    uncached = tokens.input - tokens.cached_input - tokens.cache_write
    total = (
        uncached * price.input_per_1m
        + tokens.cached_input * cached_price
        + tokens.cache_write * write_price
        + tokens.output * price.output_per_1m
    )
    return total / ONE_MILLION


def worst_case_cost(*, prompt_tokens: int, max_output_tokens: int, price: Price) -> Decimal:
    """Upper bound of a request's cost before it is made (for budget reservations)."""
    return (prompt_tokens * price.input_per_1m + max_output_tokens * price.output_per_1m) / ONE_MILLION
