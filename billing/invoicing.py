"""The lines of one invoice, from a tenant's usage and plan. Pure: no ORM, no I/O.

Rules (documented in the README, "Invoices"):
- Usage lines: one per price row, long-context tier and token type (uncached input, cached
  input, 5-minute cache write, 1-hour cache write, output), quantity in tokens, unit price per
  1M tokens, amount = quantity × price / 1M rounded half-up to the cent. A price change
  mid-month gives two lines for the same model and token type. Requests billed at a
  long-context tier get lines of their own (`long_*` types). Cache hits and requests without a
  price (refused, failed) are not billed.
- Markup: one line, the plan's percentage of the exact provider cost (the sum of the usage
  records' costs, unrounded), rounded once.
- Base fee: the plan's monthly fee.
- Allowance credit: minus the included allowance, at most what usage and markup came to.
- Shared infrastructure: the tenant's share of the month's shared cost (`shared_cost_allocate`).
- Minimum commitment: when everything above is less than the plan's commitment, a true-up
  line makes up the difference.
Every line is rounded once; the invoice total is the sum of its lines.

Cost centres (`cost_centres`): each usage line's amount is split among the tenant's projects
(and "no project") pro rata to what each one's tokens cost exactly on that line, to the cent by
largest remainder, so that a project's share of every line, and the shares of a line, add up to
the line exactly.
"""

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_FLOOR, ROUND_HALF_UP, Decimal, localcontext
from fractions import Fraction

from .pricing import ONE_MILLION, Price, Tier

CENT = Decimal("0.01")
ZERO = Decimal(0)
UNIT_TOKENS = "1M tokens"
UNIT_MONTH = "month"


class LineType(enum.StrEnum):
    INPUT = "input"
    CACHED_INPUT = "cached_input"
    CACHE_WRITE = "cache_write"  # five-minute writes
    CACHE_WRITE_1H = "cache_write_1h"
    OUTPUT = "output"
    LONG_INPUT = "long_input"
    LONG_CACHED_INPUT = "long_cached_input"
    LONG_CACHE_WRITE = "long_cache_write"
    LONG_CACHE_WRITE_1H = "long_cache_write_1h"
    LONG_OUTPUT = "long_output"
    MARKUP = "markup"
    BASE_FEE = "base_fee"
    ALLOWANCE_CREDIT = "allowance_credit"
    SHARED_COST = "shared_cost"
    MINIMUM_COMMITMENT = "minimum_commitment"


BASE_TOKEN_TYPES = (
    LineType.INPUT,
    LineType.CACHED_INPUT,
    LineType.CACHE_WRITE,
    LineType.CACHE_WRITE_1H,
    LineType.OUTPUT,
)
# A long-context request's tokens: the same kinds, billed at its tier's prices, on lines of their own.
LONG_CONTEXT = {
    LineType.INPUT: LineType.LONG_INPUT,
    LineType.CACHED_INPUT: LineType.LONG_CACHED_INPUT,
    LineType.CACHE_WRITE: LineType.LONG_CACHE_WRITE,
    LineType.CACHE_WRITE_1H: LineType.LONG_CACHE_WRITE_1H,
    LineType.OUTPUT: LineType.LONG_OUTPUT,
}
TOKEN_TYPES = (*BASE_TOKEN_TYPES, *LONG_CONTEXT.values())
_BASE_OF = {long: base for base, long in LONG_CONTEXT.items()}
_TOKEN_LABELS = {
    LineType.INPUT: "input tokens",
    LineType.CACHED_INPUT: "cached input tokens",
    LineType.CACHE_WRITE: "5-minute cache write tokens",
    LineType.CACHE_WRITE_1H: "1-hour cache write tokens",
    LineType.OUTPUT: "output tokens",
}


class CostMismatch(Exception):
    """The stored costs of a price row's records are not what their tokens cost at that price."""


def round_cents(amount: Decimal) -> Decimal:
    """Half-up to the cent: the one rounding of a line (docs/design.md#money)."""
    return amount.quantize(CENT, rounding=ROUND_HALF_UP)


@dataclass(frozen=True, slots=True)
class PriceUsage:
    """A tenant's billable usage in the month at one price row and tier (cache hits excluded)."""

    price_id: int
    model: str
    effective_from: datetime
    price: Price
    input_tokens: int  # the whole prompt, cached and cache-write tokens included
    cached_input_tokens: int
    cache_write_tokens: int  # one-hour writes included
    output_tokens: int
    cost: Decimal  # the exact sum of the records' stored costs
    cache_write_1h_tokens: int = 0
    tier: Tier | None = None  # the long-context tier these requests were billed at; None: base prices

    def quantities(self) -> dict[LineType, tuple[int, Decimal]]:
        """Tokens and price per 1M, per token type (the `long_*` types for a tier's usage)."""
        rates = self.price.rates(self.tier)
        quantities = {
            LineType.INPUT: (self.input_tokens - self.cached_input_tokens - self.cache_write_tokens, rates.input),
            LineType.CACHED_INPUT: (self.cached_input_tokens, rates.cached_input),
            LineType.CACHE_WRITE: (self.cache_write_tokens - self.cache_write_1h_tokens, rates.cache_write),
            LineType.CACHE_WRITE_1H: (self.cache_write_1h_tokens, rates.cache_write_1h),
            LineType.OUTPUT: (self.output_tokens, rates.output),
        }
        if self.tier is None:
            return quantities
        return {LONG_CONTEXT[line_type]: value for line_type, value in quantities.items()}

    @property
    def tier_id(self) -> int | None:
        return None if self.tier is None else self.tier.id


@dataclass(frozen=True, slots=True)
class Terms:
    """The plan's terms, as they are when the invoice is generated."""

    currency: str = "USD"
    base_fee: Decimal = ZERO
    included_allowance: Decimal = ZERO
    markup_percent: Decimal = ZERO
    minimum_commitment: Decimal = ZERO


@dataclass(frozen=True, slots=True)
class Line:
    key: str
    line_type: LineType
    description: str
    quantity: Decimal
    unit: str
    unit_price: Decimal
    amount: Decimal
    model: str = ""
    price_id: int | None = None
    price_tier_id: int | None = None


def provider_cost(usage: Sequence[PriceUsage]) -> Decimal:
    return sum((u.cost for u in usage), ZERO)


def _usage_lines(usage: Sequence[PriceUsage]) -> list[Line]:
    lines = []

    def order(u: PriceUsage) -> tuple:
        return (u.model, u.effective_from, u.price_id, -1 if u.tier is None else u.tier.above_input_tokens)

    for group in sorted(usage, key=order):
        exact_total = ZERO
        tier = group.tier
        # A base line keeps the key it had before tiers existed, so regenerating a draft keeps its rows.
        suffix = f"{group.price_id}" if tier is None else f"{group.price_id}:{tier.id}"
        for line_type, (tokens, per_1m) in group.quantities().items():
            exact = tokens * per_1m / ONE_MILLION
            exact_total += exact
            if tokens == 0:
                continue
            label = _TOKEN_LABELS[_BASE_OF.get(line_type, line_type)]
            context = "" if tier is None else f" long context (input above {tier.above_input_tokens:,} tokens)"
            lines.append(
                Line(
                    key=f"{line_type}:{suffix}",
                    line_type=line_type,
                    description=(
                        f"{group.model}{context} {label} at {per_1m.normalize():f} per 1M "
                        f"(price from {group.effective_from:%Y-%m-%d})"
                    ),
                    quantity=Decimal(tokens),
                    unit=UNIT_TOKENS,
                    unit_price=per_1m,
                    amount=round_cents(exact),
                    model=group.model,
                    price_id=group.price_id,
                    price_tier_id=group.tier_id,
                )
            )
        if exact_total != group.cost:
            where = "" if tier is None else f" (tier above {tier.above_input_tokens})"
            raise CostMismatch(
                f"records of {group.model} at price #{group.price_id}{where} cost {group.cost} as stored, "
                f"but their tokens cost {exact_total} at that price"
            )
    return lines


@dataclass(frozen=True, slots=True)
class CostCentreShare:
    """One project's part of one usage line: its tokens and its share of the line's amount."""

    line_key: str
    project: str  # "" for usage without a project
    quantity: Decimal
    amount: Decimal


def cost_centres(
    *, lines: Sequence[Line], usage_by_project: Mapping[tuple[int, int | None], Mapping[str, PriceUsage]]
) -> list[CostCentreShare]:
    """The usage lines of `lines` split per project; `usage_by_project[(price_id, tier_id)]` holds
    each project's part of that price row's usage (tokens and cost, the same price and tier).

    Shares of a line with tokens are listed even when they come to 0.00 (a project's few tokens).
    """
    shares = []
    with localcontext() as context:
        context.prec = 60
        for line in lines:
            if line.line_type not in TOKEN_TYPES or line.price_id is None:
                continue
            parts = usage_by_project.get((line.price_id, line.price_tier_id), {})
            tokens = {project: part.quantities()[line.line_type] for project, part in parts.items()}
            tokens = {project: value for project, value in tokens.items() if value[0]}
            weights = {project: count * per_1m / ONE_MILLION for project, (count, per_1m) in tokens.items()}
            amounts = shared_cost_allocate(total=line.amount, weights=weights)
            shares.extend(
                CostCentreShare(
                    line_key=line.key, project=project, quantity=Decimal(tokens[project][0]), amount=amounts[project]
                )
                for project in sorted(tokens)
            )
    return shares


def _month_line(line_type: LineType, description: str, amount: Decimal) -> Line:
    return Line(
        key=str(line_type),
        line_type=line_type,
        description=description,
        quantity=Decimal(1),
        unit=UNIT_MONTH,
        unit_price=amount,
        amount=amount,
    )


def invoice_lines(*, usage: Sequence[PriceUsage], terms: Terms, shared_cost: Decimal = ZERO) -> list[Line]:
    """Every line of the invoice, in their order. Raises CostMismatch on inconsistent records."""
    with localcontext() as context:
        context.prec = 60  # token counts × prices × percentages never come near this
        lines = _usage_lines(usage)
        usage_amount = sum((line.amount for line in lines), ZERO)
        cost = provider_cost(usage)
        markup_amount = ZERO
        if terms.markup_percent and cost:
            rate = terms.markup_percent / 100
            markup_amount = round_cents(cost * rate)
            lines.append(
                Line(
                    key=str(LineType.MARKUP),
                    line_type=LineType.MARKUP,
                    description=f"Markup of {terms.markup_percent.normalize():f}% on provider cost",
                    quantity=cost,
                    unit=terms.currency,
                    unit_price=rate,
                    amount=markup_amount,
                )
            )
        if terms.base_fee:
            lines.append(_month_line(LineType.BASE_FEE, "Monthly base fee", round_cents(terms.base_fee)))
        credit = min(round_cents(terms.included_allowance), max(usage_amount + markup_amount, ZERO))
        if credit > 0:
            lines.append(
                _month_line(
                    LineType.ALLOWANCE_CREDIT,
                    f"Included allowance (up to {terms.included_allowance:f})",
                    -credit,
                )
            )
        if shared_cost:
            lines.append(_month_line(LineType.SHARED_COST, "Share of shared infrastructure cost", shared_cost))
        before_true_up = sum((line.amount for line in lines), ZERO)
        commitment = round_cents(terms.minimum_commitment)
        if commitment > before_true_up:
            lines.append(
                _month_line(
                    LineType.MINIMUM_COMMITMENT,
                    f"Minimum commitment true-up (commitment {commitment:f})",
                    commitment - before_true_up,
                )
            )
    return lines


def invoice_total(lines: Sequence[Line]) -> Decimal:
    return sum((line.amount for line in lines), ZERO)


def shared_cost_allocate(*, total: Decimal, weights: Mapping[str, Decimal]) -> dict[str, Decimal]:
    """Split `total` (whole cents) pro rata to `weights`; the shares add up to it to the cent.

    Each key gets the cents of its exact share rounded down; the cents left over go one each
    to the largest remainders, ties broken by key (the tenant slug), so the result is the same
    on every run. All weights zero: an equal split.
    """
    if not weights or not total:
        return dict.fromkeys(weights, ZERO)
    cents = total * 100
    if cents != cents.to_integral_value() or cents < 0:
        raise ValueError(f"a shared cost is a non-negative amount in cents, not {total}")
    cents_int = int(cents)
    exact = {key: Fraction(value) for key, value in weights.items()}
    if any(value < 0 for value in exact.values()):
        raise ValueError("weights cannot be negative")
    whole = sum(exact.values())
    if whole == 0:
        exact = dict.fromkeys(exact, Fraction(1))
        whole = Fraction(len(exact))
    shares = {key: cents_int * value / whole for key, value in exact.items()}
    floors = {key: share.numerator // share.denominator for key, share in shares.items()}
    left = cents_int - sum(floors.values())
    by_remainder = sorted(shares, key=lambda key: (-(shares[key] - floors[key]), key))
    for key in by_remainder[:left]:
        floors[key] += 1
    return {key: Decimal(value).scaleb(-2).quantize(CENT, rounding=ROUND_FLOOR) for key, value in floors.items()}
