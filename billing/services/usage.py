"""Usage: one metered request becomes one `UsageRecord`, its cost computed here once and never again.

The gateway's `gateway.metered.Metered` is what arrives here; billing does not import it (imports
point gateway → billing → tenants) but reads the same attributes through `MeteredUsage`, a
protocol: the hot path hands its own object over as is, no copy, no conversion.
"""

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from functools import cache
from typing import Protocol

from django.db import DEFAULT_DB_ALIAS, connections

from billing.models import UsageRecord
from billing.pricing import Price, Tokens, request_cost


class MeteredUsage(Protocol):
    """What billing reads of one finished request (the gateway's `Metered` has it all)."""

    @property
    def request_id(self) -> str: ...
    @property
    def created_at(self) -> datetime: ...
    @property
    def tenant_id(self) -> int: ...
    @property
    def api_key_id(self) -> int | None: ...
    @property
    def model(self) -> str: ...
    @property
    def provider(self) -> str: ...
    @property
    def upstream_model(self) -> str: ...
    @property
    def endpoint(self) -> str: ...
    @property
    def status_code(self) -> int: ...
    @property
    def error_type(self) -> str: ...
    @property
    def tokens(self) -> Tokens: ...
    @property
    def price_id(self) -> int | None: ...
    @property
    def price(self) -> Price | None: ...
    @property
    def latency_ms(self) -> int: ...
    @property
    def streamed(self) -> bool: ...
    @property
    def estimated(self) -> bool: ...
    @property
    def cache_hit(self) -> bool: ...
    @property
    def requested_model(self) -> str: ...
    @property
    def project_id(self) -> int | None: ...
    @property
    def end_user(self) -> str: ...
    @property
    def tags(self) -> dict | None: ...


def usage_cost(*, metered: MeteredUsage) -> Decimal:
    """The cost `usage_record_create` stores for `metered`: also what a record spooled through a
    database outage (gateway/journal.py) settles its budget with before it is written."""
    if metered.price is None or metered.cache_hit:
        return Decimal(0)
    return request_cost(tokens=metered.tokens, price=metered.price)


def _tier_id(metered: MeteredUsage) -> int | None:
    """The long-context tier the request is billed at (`request_cost` picks the same one)."""
    if metered.price is None or metered.cache_hit:
        return None
    tier = metered.price.tier_for(metered.tokens.input)
    return None if tier is None else tier.id


def _record_fields(metered: MeteredUsage, cost: Decimal) -> dict:
    """A usage record's columns (by attribute name) for `metered`: one mapping for both writes."""
    tokens = metered.tokens
    return {
        "request_id": metered.request_id,
        "created_at": metered.created_at,
        "tenant_id": metered.tenant_id,
        "api_key_id": metered.api_key_id,
        "model": metered.model[:100],
        "provider": metered.provider,
        "upstream_model": metered.upstream_model,
        "endpoint": metered.endpoint,
        "status_code": metered.status_code,
        "error_type": metered.error_type,
        "input_tokens": tokens.input,
        "cached_input_tokens": tokens.cached_input,
        "cache_write_tokens": tokens.cache_write,
        "cache_write_1h_tokens": tokens.cache_write_1h,
        "output_tokens": tokens.output,
        "cost": cost,
        "price_id": metered.price_id,
        "price_tier_id": _tier_id(metered),
        "latency_ms": metered.latency_ms,
        "streamed": metered.streamed,
        "estimated": metered.estimated,
        "cache_hit": metered.cache_hit,
        "requested_model": metered.requested_model[:100],
        # Attribution inside the tenant (issue 14).
        "project_id": metered.project_id,
        "end_user": metered.end_user,
        "tags": metered.tags or {},
    }


def usage_record_create(*, metered: MeteredUsage) -> UsageRecord:
    """Record one request with its cost, computed here once and never again (docs/design.md#money).

    A request without a price (unknown model, refused before routing) costs nothing; so does a
    cache hit, whose saving is the cost it would have had.
    """
    return UsageRecord.objects.create(**_record_fields(metered, usage_cost(metered=metered)))


@dataclass(frozen=True, slots=True)
class RecordedUsage:
    """What `usage_record_upsert` left in the table for a request id."""

    cost: Decimal
    error_type: str
    written: bool  # this call's record is the one stored (inserted, or replacing a replaceable one)


@cache
def _fields(names: tuple[str, ...]) -> tuple:
    return tuple(UsageRecord._meta.get_field(name) for name in names)


@cache
def _upsert_statement(vendor: str, names: tuple[str, ...]) -> str:
    quote = connections[DEFAULT_DB_ALIAS].ops.quote_name
    table = quote(UsageRecord._meta.db_table)
    columns = [quote(UsageRecord._meta.get_field(name).column) for name in names]
    error_type = quote("error_type")
    # Identifiers from the model's own metadata, quoted; every value is a parameter.
    return (
        f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join(['%s'] * len(columns))}) "  # noqa: S608
        f"ON CONFLICT ({quote('request_id')}, {quote('created_at')}) DO UPDATE SET "
        + ", ".join(f"{column} = EXCLUDED.{column}" for column in columns)
        + f" WHERE {table}.{error_type} = %s AND EXCLUDED.{error_type} <> %s RETURNING {error_type}"  # noqa: S608
    )


def usage_record_upsert(*, metered: MeteredUsage, replaceable: str) -> RecordedUsage:
    """Record one request once, whoever tries and however often: one `INSERT … ON CONFLICT`
    statement (PostgreSQL and SQLite alike), no transaction of its own.

    The record is unique on (request_id, created_at), the partition key being part of every
    unique constraint of a partitioned table: every writer of a request (the gateway, the journal's
    replay of a spooled record, the reconciler's `interrupted` record) carries the `created_at`
    set when the request started, so they all collide on the same row.

    A record already there for the request id stays (a replay of a write that committed after
    all), unless its error type is `replaceable` and this one's is not: then this record takes its
    place (the journal's `interrupted`, written while the request was in fact still running).
    The cost is computed here once (`usage_cost`), as `usage_record_create` computes it.
    """
    # The thread's connection itself, not `django.db.connection`: that proxy looks the connection
    # up again (a context-local lookup, ~1 µs) on every attribute, twenty-odd times per record.
    connection = connections[DEFAULT_DB_ALIAS]
    sql, params, cost = usage_upsert_statement(metered=metered, replaceable=replaceable, connection=connection)
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        if cursor.fetchone() is not None:
            return RecordedUsage(cost=cost, error_type=metered.error_type, written=True)
    return usage_record_kept(request_id=metered.request_id, created_at=metered.created_at)


def usage_upsert_statement(*, metered: MeteredUsage, replaceable: str, connection) -> tuple[str, list, Decimal]:
    """(SQL, parameters, cost) of `usage_record_upsert`'s statement, for a caller that runs it on a
    connection of its own (the gateway's direct write, gateway/db.py): a row back means this
    record is the one stored; none, `usage_record_kept` says what is. `connection`: a Django
    connection of the database's vendor, to prepare the values (it is not queried)."""
    cost = usage_cost(metered=metered)
    fields = _record_fields(metered, cost)
    names = tuple(fields)
    values = zip(_fields(names), fields.values(), strict=True)
    params = [field.get_db_prep_save(value, connection) for field, value in values]
    return _upsert_statement(connection.vendor, names), [*params, replaceable, replaceable], cost


def usage_record_kept(*, request_id: str, created_at) -> RecordedUsage:
    """The record already stored for the request (`request_id` at its `created_at`: the month
    partition's key is in the unique constraint), when an upsert left it in place."""
    kept = UsageRecord.objects.filter(request_id=request_id, created_at=created_at)
    kept_cost, kept_error_type = kept.values_list("cost", "error_type")[0]
    return RecordedUsage(cost=kept_cost, error_type=kept_error_type, written=False)
