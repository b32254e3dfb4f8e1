"""Azure OpenAI: the OpenAI wire format, addressed by deployment name (docs/design.md#wire-facts-billing-depends-on).

`AsyncAzureOpenAI` turns `model=<deployment>` into `/openai/deployments/<deployment>/...` with
`api-version` and the `api-key` header; everything else is the OpenAI adapter's.
"""

from .openai import OpenAIAdapter


class AzureAdapter(OpenAIAdapter):
    provider = "azure"
