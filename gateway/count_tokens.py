"""`POST /v1/messages/count_tokens`: how many input tokens a Messages body would be billed for (issue 12).

The Anthropic SDK's `client.messages.count_tokens` (Claude Code calls it on every turn). The
answer is Anthropic's shape, `{"input_tokens": N}`, whatever serves the model:
- an Anthropic deployment: the provider's own count endpoint, through the SDK like a completion
  (fallback to the next deployment on a retryable failure), with the caller's `anthropic-beta`;
- an OpenAI or Azure deployment: counted here, without calling anyone. The body is translated
  as /v1/messages would translate it (gateway/translate.py; what cannot be translated is the
  same 400) and its messages are counted with the upstream model's BPE by
  `tokenizer.count_message_tokens`, exactly as the mock provider bills a chat prompt, so the
  count equals the `input_tokens` that /v1/messages then reports for the same body. Tool
  definitions are not counted, as that billing model does not count them.

Not billed, but a request all the same: it goes through the request's owner (gateway/lifecycle.py)
and is admitted with a zero token and budget hold, so it counts toward the tenant's and key's
requests per minute and takes a concurrency slot while it runs; an exhausted budget does not
refuse it. It writes no usage record (there is nothing to bill or invoice); it shows in /metrics
(`gateway_requests{endpoint="count_tokens"}`, the duration histogram, errors) and gets the
request's JSON log line, with zero tokens and cost. No write-ahead trace is taken: there is no
record for a reconciler to write.
"""

import logging

import orjson
from django.http import HttpResponse

from . import observability, proxy, translate
from .errors import GatewayError
from .lifecycle import Call, Outcome, Owner
from .limits import Admission, admit
from .providers import ProviderError, adapter_for
from .providers.base import ANTHROPIC_BETAS, GATEWAY_REQUEST_ID
from .registry import DeploymentView, month_to_date
from .tokenizer import O200K, count_message_tokens, encoding_for_model

log = logging.getLogger(__name__)

__all__ = ["count_tokens", "local_count"]


async def count_tokens(call: Call, owner: Owner) -> HttpResponse:
    deployments = await proxy.resolve(call, profile=False)
    await owner.admit(lambda: _admit(call))
    result = await _count(call, deployments)
    await owner.finish(Outcome(status=200))
    return HttpResponse(orjson.dumps(result), content_type="application/json")


async def _admit(call: Call) -> Admission:
    """Requests per minute and concurrency; no tokens, no budget hold (nothing is billed)."""
    tenant = call.caller.tenant
    return await admit(
        caller=call.caller,
        request_id=call.request_id,
        prompt_tokens=0,
        max_output_tokens=0,
        worst_case_cost=None,
        budget=None,
        month_to_date=lambda: month_to_date(tenant.id),
    )


def local_count(body: dict, *, deployment: DeploymentView, model_name: str) -> int:
    """The prompt of a Messages body, translated for an OpenAI-format deployment, in its tokens."""
    try:
        translated = translate.anthropic_request_to_openai(body, upstream_model=deployment.upstream)
    except translate.TranslationError as exc:
        raise GatewayError(400, str(exc), "unsupported_parameter", param=exc.param) from exc
    encoding = encoding_for_model(deployment.upstream) or encoding_for_model(model_name) or O200K
    return count_message_tokens(translated["messages"], encoding=encoding)


async def _count(call: Call, deployments: list[DeploymentView]) -> dict:
    GATEWAY_REQUEST_ID.set(call.request_id)
    ANTHROPIC_BETAS.set(call.betas)
    failure: ProviderError | None = None
    for deployment in deployments:
        call.deployment = deployment
        if deployment.provider != "anthropic":
            return {"input_tokens": local_count(call.body, deployment=deployment, model_name=call.model_name)}
        secret, own_base_url = call.caller.tenant.credentials.get(deployment.provider, (None, ""))
        try:
            adapter = adapter_for(deployment.provider, base_url=own_base_url or deployment.base_url, api_key=secret)
            return await adapter.count_tokens({**call.body, "model": deployment.upstream})
        except ProviderError as exc:
            failure = exc
            log.warning("request %s: deployment %s failed to count: %s", call.request_id, deployment.id, exc.kind)
            observability.upstream_failed(
                tenant=call.caller.tenant.slug, model=call.model_name, provider=deployment.provider, kind=exc.kind
            )
            if not exc.retryable:
                break
    assert failure is not None
    raise proxy.gateway_error(failure)
