"""Invoice generation: lines from the stored per-record prices and costs, plan terms, shared cost,
drafts and finalization, immutability, credit notes, re-runs that change nothing, and a
property test over random usage."""

from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal

import pytest
from django.db import IntegrityError, transaction
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from billing.models import Invoice, InvoiceLine, InvoiceRun, Plan, SharedCost, Subscription, UsageRecord
from billing.pricing import ONE_MILLION, Tokens, request_cost
from billing.services import BillingError, credit_note_create, invoices_finalize, invoices_generate
from tenants.models import CatalogModel, Tenant
from tests.billing_fixtures import add_price, at, price_of, save, usage
from tests.conftest import make_tenant

D = Decimal
MARCH = date(2024, 3, 1)
IN_GRACE = datetime(2024, 4, 2, 9, tzinfo=UTC)
CLOSED = datetime(2024, 4, 20, 9, tzinfo=UTC)
CENT = D("0.01")


def half_up(amount: Decimal) -> Decimal:
    return amount.quantize(CENT, rounding=ROUND_HALF_UP)


def lines_of(tenant, period=MARCH, sequence=1):
    invoice = Invoice.objects.get(tenant=tenant, period=period, kind="invoice", sequence=sequence)
    return invoice, list(invoice.lines.order_by("position"))


def snapshot():
    return (
        sorted(Invoice.objects.values_list()),
        sorted(InvoiceLine.objects.values_list()),
        sorted(InvoiceRun.objects.values_list("period", "closed_at")),
    )


def backdate(*tenants):
    Tenant.objects.filter(id__in=[t.id for t in tenants]).update(created_at=datetime(2023, 1, 1, tzinfo=UTC))


@pytest.mark.django_db
def test_a_price_change_mid_month_bills_each_request_at_its_price_and_shows_both_lines(alice, catalog):
    gpt = catalog["gpt"]  # 0.15 / 0.60 / cached 0.075 from 2024-01-01
    new = add_price(gpt, datetime(2024, 3, 15, tzinfo=UTC), input_per_1m="0.20", output_per_1m="0.80", cached="0.10")
    records = save(
        usage(alice, gpt, at(date(2024, 3, 14), 23, 59), input_tokens=1_000_000, cached=200_000, output_tokens=500_000),
        usage(alice, gpt, at(date(2024, 3, 15), 0, 0), input_tokens=2_125_000, output_tokens=1_000_000),
        usage(alice, gpt, at(date(2024, 3, 31), 23, 59), input_tokens=1_000_000, output_tokens=0),
    )
    assert [r.price_id for r in records] == [gpt.prices.get(input_per_1m=D("0.15")).id, new.id, new.id]
    invoices_generate(period=MARCH, now=IN_GRACE)
    invoice, lines = lines_of(alice)
    rows = [(line.line_type, line.model, line.quantity, line.unit_price, line.amount) for line in lines]
    assert rows == [
        ("input", "gpt-test", 800_000, D("0.15"), D("0.12")),
        ("cached_input", "gpt-test", 200_000, D("0.075"), D("0.02")),  # 0.015 half-up
        ("output", "gpt-test", 500_000, D("0.60"), D("0.30")),
        ("input", "gpt-test", 3_125_000, D("0.20"), D("0.63")),  # 0.625: half-up, not half-even
        ("output", "gpt-test", 1_000_000, D("0.80"), D("0.80")),
    ]
    assert invoice.provider_cost == sum(r.cost for r in records) == D("1.86")
    assert invoice.total == invoice.subtotal == D("1.87")  # the sum of the rounded lines
    assert invoice.status == "draft"
    assert invoice.number == f"INV-2024-03-{alice.id:06d}"
    assert (invoice.period, invoice.period_end) == (MARCH, date(2024, 3, 31))


@pytest.mark.django_db
def test_plan_terms_shared_cost_and_the_total_as_the_sum_of_lines(catalog):
    plan = Plan.objects.create(
        name="business",
        monthly_base_fee=D("100.00"),
        included_allowance=D("5.00"),
        markup_percent=D("20.00"),
        minimum_commitment=D("140.00"),
    )
    alice, bob = make_tenant("alice", plan=plan), make_tenant("bob", plan=plan)
    backdate(alice, bob)
    save(
        usage(alice, catalog["azure"], at(date(2024, 3, 3)), input_tokens=4_000_000, output_tokens=1_000_000),  # 20
        usage(bob, catalog["azure"], at(date(2024, 3, 3)), input_tokens=1_000_000, output_tokens=250_000),  # 5
    )
    SharedCost.objects.create(period=MARCH, description="Redis", amount=D("30.00"))
    SharedCost.objects.create(period=MARCH, description="Egress", amount=D("0.01"))
    invoices_generate(period=MARCH, now=IN_GRACE)
    _, lines = lines_of(alice)
    assert [(line.line_type, line.amount) for line in lines] == [
        ("input", D("10.00")),
        ("output", D("10.00")),
        ("markup", D("4.00")),
        ("base_fee", D("100.00")),
        ("allowance_credit", D("-5.00")),
        ("shared_cost", D("24.01")),  # 4/5 of 30.01 = 24.008, plus the leftover cent (largest remainder)
    ]
    bob_invoice, bob_lines = lines_of(bob)
    assert [(line.line_type, line.amount) for line in bob_lines][-2:] == [
        ("shared_cost", D("6.00")),
        ("minimum_commitment", D("140.00") - (D("2.50") + D("2.50") + D("1.00") + D("100.00") - D("5.00") + D("6.00"))),
    ]
    assert bob_invoice.total == D("140.00")
    assert Invoice.objects.get(tenant=alice).total == D("143.01")  # above the commitment: no true-up
    for invoice in Invoice.objects.all():
        assert invoice.total == sum(line.amount for line in invoice.lines.all())
    shared = InvoiceLine.objects.filter(line_type="shared_cost").values_list("amount", flat=True)
    assert sum(shared) == D("30.01")


@pytest.mark.django_db
def test_who_is_billed_subscribers_of_the_month_and_anyone_with_usage(catalog):
    plan = Plan.objects.create(name="starter", monthly_base_fee=D("25.00"))
    old, new, used = make_tenant("old", plan=plan), make_tenant("new", plan=plan), make_tenant("used", plan=plan)
    backdate(old)
    stray = Tenant.objects.create(slug="stray", name="No plan")
    save(
        usage(used, catalog["gpt"], at(date(2024, 3, 9)), input_tokens=10),
        usage(stray, catalog["gpt"], at(date(2024, 3, 9)), input_tokens=1_000_000),
    )
    result = invoices_generate(period=MARCH, now=IN_GRACE)
    assert result.created == 3
    billed = dict(Invoice.objects.values_list("tenant__slug", "total"))
    assert billed == {"old": D("25.00"), "used": D("25.00"), "stray": D("0.15")}
    assert not Invoice.objects.filter(tenant=new).exists()
    assert Invoice.objects.get(tenant=stray).plan_name == ""


@pytest.mark.django_db
def test_cache_hits_and_unpriced_errors_are_not_billed_but_priced_errors_are(alice, catalog):
    gpt = catalog["gpt"]
    save(
        usage(alice, gpt, at(date(2024, 3, 2)), input_tokens=1_000_000, cache_hit=True),
        usage(alice, gpt, at(date(2024, 3, 2)), status_code=429, error_type="rate_limit", priced=False),
        usage(alice, gpt, at(date(2024, 3, 2)), input_tokens=1_000_000, status_code=502, error_type="stream_broken"),
    )
    invoices_generate(period=MARCH, now=IN_GRACE)
    _, lines = lines_of(alice)
    assert [(line.line_type, line.quantity) for line in lines] == [("input", 1_000_000)]


@pytest.mark.django_db
def test_regenerating_changes_no_row_until_the_usage_changes(alice, bob, catalog):
    save(
        usage(alice, catalog["gpt"], at(date(2024, 3, 2)), input_tokens=123_456, output_tokens=789),
        usage(bob, catalog["claude"], at(date(2024, 3, 30)), input_tokens=5000, cached=1000, cache_write=2000),
    )
    first = invoices_generate(period=MARCH, now=IN_GRACE)
    assert (first.created, first.rolled_up_days) == (2, 2)
    before = snapshot()
    again = invoices_generate(period=MARCH, now=IN_GRACE + timedelta(hours=1))
    assert (again.created, again.updated, again.unchanged, again.rolled_up_days) == (0, 0, 2, 0)
    assert snapshot()[:2] == before[:2]  # to the timestamps

    save(usage(alice, catalog["gpt"], at(date(2024, 3, 2), 13), input_tokens=1_000_000))  # a late record
    later = IN_GRACE + timedelta(hours=2)
    result = invoices_generate(period=MARCH, now=later)
    assert (result.updated, result.unchanged) == (1, 1)
    invoice, lines = lines_of(alice)
    assert invoice.generated_at == later
    assert lines[0].quantity == 1_123_456
    assert invoice.total == D("0.17")  # (1_123_456 × 0.15 + 789 × 0.60) / 1M = 0.1689918


@pytest.mark.django_db
def test_a_month_is_generated_from_its_closed_days_rollups_and_todays_raw_records(alice, catalog):
    now = datetime(2024, 3, 20, 12, tzinfo=UTC)
    save(
        usage(alice, catalog["gpt"], at(date(2024, 3, 5)), input_tokens=1_000_000),
        usage(alice, catalog["gpt"], datetime(2024, 3, 20, 10, tzinfo=UTC), input_tokens=2_000_000),
    )
    result = invoices_generate(period=MARCH, now=now)
    assert result.rolled_up_days == 1
    _, lines = lines_of(alice)
    assert lines[0].quantity == 3_000_000
    with pytest.raises(BillingError, match="still open"):
        invoices_generate(period=MARCH, finalize=True, now=now)
    with pytest.raises(BillingError, match="not started"):
        invoices_generate(period=date(2024, 4, 1), now=now)


@pytest.mark.django_db
def test_a_finalized_invoice_never_changes_and_the_database_refuses_edits(alice, catalog):
    save(usage(alice, catalog["gpt"], at(date(2024, 3, 2)), input_tokens=1_000_000))
    result = invoices_generate(period=MARCH, finalize=True, now=CLOSED)
    assert result.finalized == 1
    invoice, lines = lines_of(alice)
    assert (invoice.status, invoice.finalized_at) == ("finalized", CLOSED)
    before = snapshot()[:2]

    save(usage(alice, catalog["gpt"], at(date(2024, 3, 3)), input_tokens=1_000_000))
    SharedCost.objects.create(period=MARCH, description="late", amount=D("10.00"))
    again = invoices_generate(period=MARCH, now=CLOSED + timedelta(days=1))
    assert (again.kept, again.updated, again.created) == (1, 0, 0)
    assert snapshot()[:2] == before

    for attempt in (
        lambda: Invoice.objects.filter(pk=invoice.pk).update(total=D("0.01")),
        lambda: Invoice.objects.filter(pk=invoice.pk).delete(),
        lambda: InvoiceLine.objects.filter(invoice=invoice).update(amount=D("0.01")),
        lambda: InvoiceLine.objects.filter(invoice=invoice).delete(),
        lambda: InvoiceLine.objects.create(
            invoice=invoice, key="x", position=9, line_type="base_fee", quantity=1, unit="month", unit_price=1, amount=1
        ),
    ):
        with pytest.raises(IntegrityError, match="finalized"), transaction.atomic():
            attempt()
    assert snapshot()[:2] == before


@pytest.mark.django_db
def test_a_correction_is_a_credit_note_then_a_new_draft(alice, catalog):
    save(usage(alice, catalog["gpt"], at(date(2024, 3, 2)), input_tokens=1_000_000, output_tokens=100_000))
    invoices_generate(period=MARCH, finalize=True, now=CLOSED)
    invoice, lines = lines_of(alice)
    with pytest.raises(BillingError, match="only a finalized invoice"):
        credit_note_create(
            invoice_id=Invoice.objects.create(
                number="X", tenant=alice, period=date(2024, 2, 1), period_end=date(2024, 2, 29), generated_at=CLOSED
            ).id,
            reason="",
        )

    save(usage(alice, catalog["gpt"], at(date(2024, 3, 9)), input_tokens=1_000_000))  # found too late
    note = credit_note_create(invoice_id=invoice.id, reason="usage of March 9 missing", now=CLOSED)
    assert note.number == f"CN-2024-03-{alice.id:06d}-1"
    assert (note.kind, note.status, note.corrects, note.total) == ("credit_note", "finalized", invoice, -invoice.total)
    assert [(n.line_type, n.quantity, n.amount) for n in note.lines.order_by("position")] == [
        (line.line_type, -line.quantity, -line.amount) for line in lines
    ]
    with pytest.raises(BillingError, match="credited already"):
        credit_note_create(invoice_id=invoice.id, reason="again")

    result = invoices_generate(period=MARCH, now=CLOSED)
    assert (result.created, result.kept) == (1, 0)
    corrected, corrected_lines = lines_of(alice, sequence=2)
    assert corrected.number == f"INV-2024-03-{alice.id:06d}-2"
    assert corrected.status == "draft"
    assert corrected_lines[0].quantity == 2_000_000
    assert invoices_finalize(invoice_ids=[corrected.id], now=CLOSED) == 1
    assert invoices_generate(period=MARCH, now=CLOSED).kept == 1  # nothing more to issue
    assert Invoice.objects.filter(tenant=alice, period=MARCH).count() == 3


@pytest.mark.django_db
def test_inconsistent_stored_costs_stop_the_run_and_nothing_is_written(alice, catalog):
    record = save(usage(alice, catalog["gpt"], at(date(2024, 3, 2)), input_tokens=1000))[0]
    UsageRecord.objects.filter(pk=record.pk).update(cost=record.cost + D("0.000000000001"))
    with pytest.raises(BillingError, match="alice: records of gpt-test"):
        invoices_generate(period=MARCH, now=IN_GRACE)
    assert not Invoice.objects.exists()


# --- the property: random usage -> invoices that add up to the cent ------------------------

# Round prices and token counts in multiples of 5000 make half-cent ties (x.xx5) common.
prices = st.one_of(
    st.decimals(min_value=0, max_value=100, places=6, allow_nan=False, allow_infinity=False),
    st.sampled_from([D("1"), D("0.1"), D("3"), D("0.5"), D("15")]),
)
token_counts = st.one_of(st.integers(0, 3_000_000), st.integers(0, 400).map(lambda k: k * 5000))
money = st.decimals(min_value=0, max_value=500, places=2, allow_nan=False, allow_infinity=False)
SECONDS_IN_MARCH = 31 * 86_400


@st.composite
def worlds(draw):
    models = []
    for _ in range(draw(st.integers(1, 3))):
        change_days = draw(st.lists(st.integers(0, SECONDS_IN_MARCH - 1), max_size=2, unique=True))
        rows = [(None, draw(prices), draw(prices), draw(st.none() | prices), draw(st.none() | prices))]
        rows += [(second, draw(prices), draw(prices), draw(st.none() | prices), None) for second in change_days]
        models.append(rows)
    tenants = [
        {
            "base_fee": draw(money),
            "allowance": draw(money),
            "markup": draw(st.decimals(min_value=0, max_value=50, places=2, allow_nan=False, allow_infinity=False)),
            "commitment": draw(st.sampled_from([D(0), draw(money)])),
        }
        for _ in range(draw(st.integers(1, 4)))
    ]
    records = draw(
        st.lists(
            st.tuples(
                st.integers(0, len(tenants) - 1),
                st.integers(0, len(models) - 1),
                st.integers(0, SECONDS_IN_MARCH - 1),
                token_counts,
                st.sampled_from([0.0, 0.5]) | st.floats(0, 1),
                st.sampled_from([0.0]) | st.floats(0, 1),
                token_counts,
                st.sampled_from(["ok", "ok", "ok", "error", "priced_error", "cache_hit"]),
            ),
            max_size=40,
        )
    )
    shared = draw(st.sampled_from([D(0), draw(money)]))
    return models, tenants, records, shared


def _build(world):
    models, tenants_terms, records_spec, shared = world
    start = datetime(2024, 3, 1, tzinfo=UTC)
    catalog = []
    for i, rows in enumerate(models):
        model = CatalogModel.objects.create(name=f"prop-{i}", provider="openai")
        for second, inp, out, cached, write in rows:
            when = datetime(2024, 1, 1, tzinfo=UTC) if second is None else start + timedelta(seconds=second)
            add_price(model, when, input_per_1m=inp, output_per_1m=out, cached=cached, cache_write=write)
        catalog.append(model)
    tenants = []
    for i, terms in enumerate(tenants_terms):
        plan = Plan.objects.create(
            name=f"prop-{i}",
            monthly_base_fee=terms["base_fee"],
            included_allowance=terms["allowance"],
            markup_percent=terms["markup"],
            minimum_commitment=terms["commitment"],
        )
        tenants.append(make_tenant(f"prop-{i}", plan=plan))
    backdate(*tenants)
    records = []
    for t, m, second, prompt, cached_share, write_share, output, kind in records_spec:
        cached = int(prompt * cached_share)
        write = int((prompt - cached) * write_share)
        records.append(
            usage(
                tenants[t],
                catalog[m],
                start + timedelta(seconds=second),
                input_tokens=prompt if kind != "error" else 0,
                cached=cached if kind != "error" else 0,
                cache_write=write if kind != "error" else 0,
                output_tokens=output if kind != "error" else 0,
                status_code={"error": 429, "priced_error": 502}.get(kind, 200),
                error_type={"error": "rate_limit", "priced_error": "stream_broken"}.get(kind, ""),
                cache_hit=kind == "cache_hit",
                priced=kind != "error",
                endpoint="messages" if second % 2 else "chat",
            )
        )
    if shared:
        SharedCost.objects.create(period=MARCH, description="infra", amount=shared)
    return tenants, save(*records), shared


def _expected_lines(records):
    """(price id, token type) -> (tokens, exact amount), summed record by record."""
    expected: dict[tuple[int, str], list] = {}
    for record in records:
        if record.price is None or record.cache_hit:
            continue
        price = price_of(record.price)
        cached_price = price.input_per_1m if price.cached_input_per_1m is None else price.cached_input_per_1m
        write_price = price.input_per_1m if price.cache_write_per_1m is None else price.cache_write_per_1m
        parts = {
            "input": (record.input_tokens - record.cached_input_tokens - record.cache_write_tokens, price.input_per_1m),
            "cached_input": (record.cached_input_tokens, cached_price),
            "cache_write": (record.cache_write_tokens, write_price),
            "output": (record.output_tokens, price.output_per_1m),
        }
        # The record's own cost is what its parts add up to, to the last digit.
        assert sum(tokens * per_1m / ONE_MILLION for tokens, per_1m in parts.values()) == record.cost
        tokens = Tokens(
            input=record.input_tokens,
            cached_input=record.cached_input_tokens,
            cache_write=record.cache_write_tokens,
            output=record.output_tokens,
        )
        assert request_cost(tokens=tokens, price=price) == record.cost
        for token_type, (count, per_1m) in parts.items():
            entry = expected.setdefault((record.price_id, token_type), [0, D(0)])
            entry[0] += count
            entry[1] += count * per_1m / ONE_MILLION
    return {key: value for key, value in expected.items() if value[0]}


@pytest.mark.django_db
@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(world=worlds())
def test_random_usage_gives_invoices_whose_lines_are_the_exact_record_costs_rounded_once(world):
    savepoint = transaction.savepoint()
    try:
        tenants, records, shared = _build(world)
        invoices_generate(period=MARCH, now=IN_GRACE)
        shares = D(0)
        for tenant in tenants:
            own = [r for r in records if r.tenant_id == tenant.id]
            invoice, lines = lines_of(tenant)
            usage_lines = {(line.price_id, line.line_type): line for line in lines if line.price_id}
            expected = _expected_lines(own)
            assert set(usage_lines) == set(expected)
            for key, (tokens, exact) in expected.items():
                assert usage_lines[key].quantity == tokens
                assert usage_lines[key].amount == half_up(exact)
                assert usage_lines[key].unit_price * tokens / ONE_MILLION == exact
            billed_cost = sum((r.cost for r in own if r.price_id and not r.cache_hit), D(0))
            assert invoice.provider_cost == billed_cost
            assert sum(exact for _, exact in expected.values()) == billed_cost
            by_type = {line.line_type: line.amount for line in lines}
            plan = tenant.subscription.plan
            if billed_cost and plan.markup_percent:
                assert by_type["markup"] == half_up(billed_cost * plan.markup_percent / 100)
            assert invoice.total == invoice.subtotal == sum(line.amount for line in lines)
            assert invoice.total >= plan.minimum_commitment
            assert all(line.amount == line.amount.quantize(CENT) for line in lines)
            shares += by_type.get("shared_cost", D(0))
        assert shares == shared
        before = snapshot()[:2]
        invoices_generate(period=MARCH, now=IN_GRACE)
        assert snapshot()[:2] == before
    finally:
        transaction.savepoint_rollback(savepoint)


@pytest.mark.django_db
def test_the_plan_is_read_when_the_invoice_is_generated(alice, catalog):
    Subscription.objects.filter(tenant=alice).update(
        plan=Plan.objects.create(name="gold", monthly_base_fee=D("1.00"), currency="EUR")
    )
    backdate(alice)
    invoices_generate(period=MARCH, now=IN_GRACE)
    invoice, _ = lines_of(alice)
    assert (invoice.plan_name, invoice.currency, invoice.total) == ("gold", "EUR", D("1.00"))
