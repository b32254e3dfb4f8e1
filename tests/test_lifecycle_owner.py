"""gateway.lifecycle.Owner at the service level: real database and Redis, no HTTP.

The live matrix (test_request_lifecycle.py) proves the paths a client can provoke; these pin the
owner's own rules, including the ones no client can time reliably: a streamed response closed
before its body started, two outcomes racing for one request, a bug inside the owned block.
"""

import asyncio
import uuid
from decimal import Decimal

import pytest
from django.db.models import Sum

from billing.models import UsageRecord
from billing.pricing import Tokens
from gateway import limits, proxy
from gateway.errors import GatewayError
from gateway.lifecycle import Call, Outcome, owned
from gateway.registry import caller_for_key, clear_caches

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def limited(catalog, alice, alice_key):
    clear_caches()
    alice.max_concurrent = 1
    alice.save()
    alice.subscription.monthly_budget = Decimal("5.00")
    alice.subscription.save()
    return alice, alice_key


def run(coroutine):
    async def main():
        try:
            return await coroutine
        finally:
            await limits.aclose()

    return asyncio.run(main())


async def new_call(secret: str) -> Call:
    call = Call(
        request_id=uuid.uuid4().hex,
        endpoint="chat",
        client_family="openai",
        caller=await caller_for_key(secret),
        body={"model": "gpt-test", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 10},
    )
    call.requested_model = call.model_name = "gpt-test"
    await proxy.resolve(call)
    return call


async def drained(owner) -> None:
    assert owner.finished
    await asyncio.shield(owner._finishing)


def state(tenant) -> tuple[int, Decimal | None, Decimal]:
    usage = limits.live_usage_sync(tenant.id)
    spent = UsageRecord.objects.filter(tenant=tenant).aggregate(s=Sum("cost"))["s"] or Decimal(0)
    return usage.in_flight, usage.month_spend, spent


def test_a_stream_closed_before_its_body_started_is_finished_by_the_closer(limited):
    tenant, secret = limited

    async def scenario():
        call = await new_call(secret)
        started = []

        async def body(owner):
            started.append(True)
            yield b"data: never\n\n"

        async with owned(call) as owner:
            await owner.admit(lambda: proxy.admit_call(call))
            response = owner.stream(body, on_abandon=lambda: Outcome(499, "client_disconnected", Tokens(input=7)))
        assert (await limits.live_usage(tenant.id)).in_flight == 1
        response.close()  # what Django does when the client left before the first byte
        for _ in range(100):
            if owner.finished:
                break
            await asyncio.sleep(0.01)
        await drained(owner)
        return call, started

    call, started = run(scenario())
    assert started == []
    record = UsageRecord.objects.get(request_id=call.request_id)
    assert (record.status_code, record.error_type, record.input_tokens) == (499, "client_disconnected", 7)
    in_flight, counter, spent = state(tenant)
    assert in_flight == 0
    assert counter == spent == record.cost > 0


def test_the_first_outcome_wins_and_the_request_is_settled_once(limited):
    tenant, secret = limited

    async def scenario():
        call = await new_call(secret)
        async with owned(call) as owner:
            await owner.admit(lambda: proxy.admit_call(call))
            first = Outcome(200, tokens=Tokens(input=100, output=10))
            second = Outcome(499, "client_disconnected", Tokens(input=999_999))
            await asyncio.gather(owner.finish(first), owner.finish(second))
            owner.finish_soon(second)
        return call

    call = run(scenario())
    record = UsageRecord.objects.get(request_id=call.request_id)
    assert (record.status_code, record.input_tokens, record.output_tokens) == (200, 100, 10)
    in_flight, counter, spent = state(tenant)
    assert in_flight == 0
    assert counter == spent == record.cost


def test_a_bug_inside_the_owned_block_is_an_internal_error_recorded_and_released(limited):
    tenant, secret = limited

    async def scenario():
        call = await new_call(secret)
        holder = []

        async def request():
            async with owned(call) as owner:
                holder.append(owner)
                await owner.admit(lambda: proxy.admit_call(call))
                raise ZeroDivisionError

        with pytest.raises(GatewayError) as raised:
            await request()
        await drained(holder[0])
        return call, raised.value

    call, error = run(scenario())
    assert (error.status, error.code) == (500, "internal_error")
    assert call.request_id in error.message
    record = UsageRecord.objects.get(request_id=call.request_id)
    assert (record.status_code, record.error_type, record.cost) == (500, "internal_error", 0)
    assert state(tenant) == (0, Decimal(0), Decimal(0))


def test_a_request_cancelled_after_the_provider_was_asked_is_billed_for_its_prompt(limited):
    tenant, secret = limited

    async def scenario():
        call = await new_call(secret)

        async def request():
            async with owned(call) as owner:
                await owner.admit(lambda: proxy.admit_call(call))
                call.upstream_asked = True
                holder.append(owner)
                await asyncio.sleep(60)  # the provider is thinking; the client leaves

        holder = []
        task = asyncio.ensure_future(request())
        while not holder:
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await drained(holder[0])
        return call

    call = run(scenario())
    record = UsageRecord.objects.get(request_id=call.request_id)
    assert (record.status_code, record.error_type, record.estimated) == (499, "client_disconnected", True)
    assert record.input_tokens > 0
    in_flight, counter, spent = state(tenant)
    assert in_flight == 0
    assert counter == spent == record.cost > 0


def test_a_handed_over_answer_finishes_itself_after_the_client_left(limited):
    tenant, secret = limited

    async def scenario():
        call = await new_call(secret)
        gate = asyncio.Event()

        async def answer(owner):
            await gate.wait()
            await owner.finish(Outcome(499, "client_disconnected", Tokens(input=50, output=5)))

        async def request():
            async with owned(call) as owner:
                await owner.admit(lambda: proxy.admit_call(call))
                holder.append(owner)
                await asyncio.shield(owner.hand_over(answer(owner)))

        holder = []
        task = asyncio.ensure_future(request())
        while not holder:
            await asyncio.sleep(0.01)
        task.cancel()  # the client is gone; the view's cancellation must not record a 499 of its own
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not holder[0].finished
        gate.set()
        while not holder[0].finished:
            await asyncio.sleep(0.01)
        await drained(holder[0])
        return call

    call = run(scenario())
    record = UsageRecord.objects.get(request_id=call.request_id)
    assert (record.input_tokens, record.output_tokens) == (50, 5)
    assert state(tenant)[0] == 0


def test_a_handed_over_answer_is_finished_in_place_once(limited):
    """On the task of `hand_over` (which a hang-up does not reach) the record and the settlement
    run in place, without a task of their own; a later outcome is a no-op."""
    tenant, secret = limited

    async def scenario():
        call = await new_call(secret)
        seen = {}

        async def answer(owner):
            await owner.finish(Outcome(200, tokens=Tokens(input=30, output=3)))
            seen["in_place"] = not isinstance(owner._finishing, asyncio.Task) and owner._finishing.done()

        async with owned(call) as owner:
            await owner.admit(lambda: proxy.admit_call(call))
            await asyncio.shield(owner.hand_over(answer(owner)))
            await owner.finish(Outcome(499, "client_disconnected", Tokens(input=999)))  # no-op
        await drained(owner)
        return call, seen

    call, seen = run(scenario())
    assert seen["in_place"] is True
    record = UsageRecord.objects.get(request_id=call.request_id)
    assert (record.status_code, record.input_tokens, record.output_tokens) == (200, 30, 3)
    in_flight, counter, spent = state(tenant)
    assert in_flight == 0
    assert counter == spent == record.cost > 0


def test_a_finish_from_elsewhere_first_wins_over_the_hand_over_task(limited):
    """When another task finishes the request first (on a task of its own, shielded), the
    hand-over task's own finish waits for it and records nothing more."""
    tenant, secret = limited

    async def scenario():
        call = await new_call(secret)

        async def answer(owner):
            first = asyncio.ensure_future(owner.finish(Outcome(200, tokens=Tokens(input=40, output=4))))
            await asyncio.sleep(0)
            assert owner.finished
            assert isinstance(owner._finishing, asyncio.Task)
            await owner.finish(Outcome(200, tokens=Tokens(input=70, output=7)))
            assert owner._finishing.done()
            await first

        async with owned(call) as owner:
            await owner.admit(lambda: proxy.admit_call(call))
            await asyncio.shield(owner.hand_over(answer(owner)))
        return call

    call = run(scenario())
    record = UsageRecord.objects.get(request_id=call.request_id)
    assert (record.input_tokens, record.output_tokens) == (40, 4)
    in_flight, counter, spent = state(tenant)
    assert in_flight == 0
    assert counter == spent == record.cost > 0
