"""The cost of one request, from its tokens and the price in force. Pure: no ORM, no I/O.

Token counts follow our UsageRecord convention: `input_tokens` is the whole prompt, of which
`cached_input_tokens` were read from the provider's cache and `cache_write_tokens` written to
it; of those writes, `cache_write_1h_tokens` were written for one hour (the rest for five
minutes). The rest of the prompt is billed at the input price. Nothing is rounded here
(docs/design.md#money).

Fallbacks of an empty price (docs/billing.md#prices): cached input and cache writes cost the
input price; one-hour writes cost the (five-minute) cache-write price, so a row that names no
one-hour price bills every write alike, as before one-hour writes were told apart.

Long-context tiers: a price may carry tiers, each a full set of prices that applies to the WHOLE
request when its input (cache reads and writes included) is above the tier's threshold
(Anthropic's 1M-context Sonnet: above 200k input tokens, 2x input, 1.5x output). The highest
tier whose threshold the input exceeds applies; none: the base prices.
"""

from dataclasses import dataclass
from decimal import Decimal

ONE_MILLION = Decimal(1_000_000)


@dataclass(frozen=True, slots=True)
class Rates:
    """Per-1M prices with every fallback resolved: what each kind of token costs."""

    input: Decimal
    output: Decimal
    cached_input: Decimal
    cache_write: Decimal  # a five-minute write
    cache_write_1h: Decimal


def _rates(
    input_per_1m: Decimal,
    output_per_1m: Decimal,
    cached_input_per_1m: Decimal | None,
    cache_write_per_1m: Decimal | None,
    cache_write_1h_per_1m: Decimal | None,
) -> Rates:
    write = input_per_1m if cache_write_per_1m is None else cache_write_per_1m
    return Rates(
        input=input_per_1m,
        output=output_per_1m,
        cached_input=input_per_1m if cached_input_per_1m is None else cached_input_per_1m,
        cache_write=write,
        cache_write_1h=write if cache_write_1h_per_1m is None else cache_write_1h_per_1m,
    )


@dataclass(frozen=True, slots=True)
class Tier:
    """Prices for a request whose input is above `above_input_tokens` (fallbacks as a price's)."""

    above_input_tokens: int
    input_per_1m: Decimal
    output_per_1m: Decimal
    cached_input_per_1m: Decimal | None = None
    cache_write_per_1m: Decimal | None = None
    cache_write_1h_per_1m: Decimal | None = None
    id: int | None = None  # the billing.PriceTier row, recorded on the usage record

    def rates(self) -> Rates:
        return _rates(
            self.input_per_1m,
            self.output_per_1m,
            self.cached_input_per_1m,
            self.cache_write_per_1m,
            self.cache_write_1h_per_1m,
        )


@dataclass(frozen=True, slots=True)
class Price:
    input_per_1m: Decimal
    output_per_1m: Decimal
    cached_input_per_1m: Decimal | None = None
    cache_write_per_1m: Decimal | None = None
    cache_write_1h_per_1m: Decimal | None = None
    tiers: tuple[Tier, ...] = ()

    def tier_for(self, input_tokens: int) -> Tier | None:
        """The tier a request with this many input tokens (cache included) is billed at; None: base."""
        reached = [tier for tier in self.tiers if input_tokens > tier.above_input_tokens]
        return max(reached, key=lambda tier: tier.above_input_tokens) if reached else None

    def rates(self, tier: Tier | None = None) -> Rates:
        """The per-1M prices of `tier` (None: the base prices)."""
        if tier is not None:
            return tier.rates()
        return _rates(
            self.input_per_1m,
            self.output_per_1m,
            self.cached_input_per_1m,
            self.cache_write_per_1m,
            self.cache_write_1h_per_1m,
        )


@dataclass(frozen=True, slots=True)
class Tokens:
    input: int = 0
    output: int = 0
    cached_input: int = 0
    cache_write: int = 0
    cache_write_1h: int = 0  # the part of cache_write written for one hour

    def __post_init__(self) -> None:
        if min(self.input, self.output, self.cached_input, self.cache_write, self.cache_write_1h) < 0:
            raise ValueError("token counts cannot be negative")
        if self.cached_input + self.cache_write > self.input:
            raise ValueError("cached and cache-write tokens are part of the input tokens")
        if self.cache_write_1h > self.cache_write:
            raise ValueError("one-hour cache-write tokens are part of the cache-write tokens")


def cost_at(*, tokens: Tokens, rates: Rates) -> Decimal:
    """The exact cost of `tokens` at these rates."""
    uncached = tokens.input - tokens.cached_input - tokens.cache_write
    total = (
        uncached * rates.input
        + tokens.cached_input * rates.cached_input
        + (tokens.cache_write - tokens.cache_write_1h) * rates.cache_write
        + tokens.cache_write_1h * rates.cache_write_1h
        + tokens.output * rates.output
    )
    return total / ONE_MILLION


def request_cost(*, tokens: Tokens, price: Price) -> Decimal:
    """The cost of one request, at the tier its whole input reaches (`Price.tier_for`)."""
    return cost_at(tokens=tokens, rates=price.rates(price.tier_for(tokens.input)))


def worst_case_cost(*, prompt_tokens: int, max_output_tokens: int, price: Price) -> Decimal:
    """Upper bound of a request's cost before it is made (for budget reservations).

    `prompt_tokens` is an upper bound of the prompt: the request may be billed at the base prices
    or at any tier that bound reaches (the highest, normally the dearest); the hold is the dearest
    of them. Every prompt token is held at the dearest input-side price (a one-hour cache write
    costs 2x input at Anthropic), so no way of billing the request exceeds the hold.
    """
    candidates = [None, *(tier for tier in price.tiers if prompt_tokens > tier.above_input_tokens)]
    worst = Decimal(0)
    for tier in candidates:
        rates = price.rates(tier)
        per_prompt_token = max(rates.input, rates.cached_input, rates.cache_write, rates.cache_write_1h)
        worst = max(worst, (prompt_tokens * per_prompt_token + max_output_tokens * rates.output) / ONE_MILLION)
    return worst
