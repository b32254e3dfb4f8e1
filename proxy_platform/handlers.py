"""A lean Django ASGI handler for the completion endpoints, the gateway's hot path (docs/design.md#the-hot-path).

Django's ASGIHandler costs a request on these endpoints about fifteen thread hops, each about
0.1 ms of CPU on our two cores, and one new thread:
- every request runs in a `ThreadSensitiveContext`, which gives it a single-thread executor,
  and so a thread, of its own;
- each sync middleware (`MiddlewareMixin`) runs its process_request and process_response in
  `sync_to_async`: the admin's stack of seven makes thirteen hops;
- `request_started` and `request_finished` call their sync receivers through `sync_to_async`.

The completion views are async, csrf-exempt, and need neither sessions, users, messages nor
the admin's clickjacking header. So this handler, for those paths only (see asgi.py):
- runs one middleware, Django's SecurityMiddleware with its hooks called on the event loop
  (they only set headers or redirect), after the ALLOWED_HOSTS check that CommonMiddleware
  does on the admin's stack;
- sends `request_started` / `request_finished` with their receivers called inline: they close
  the connections of the calling thread, and the event loop's thread has none;
- is not in a ThreadSensitiveContext. The hot path's database work goes through
  `gateway.db.db_call`, which uses a shared worker thread and hands its connection back.

The rest of Django's `handle()` (reading the body, the disconnect watch, sending) is kept as
Django 5.2 has it.
"""

import asyncio

from django.core import signals
from django.core.exceptions import RequestAborted
from django.core.handlers.asgi import ASGIHandler, get_script_prefix
from django.core.handlers.exception import convert_exception_to_response
from django.middleware.security import SecurityMiddleware
from django.urls import set_script_prefix

from gateway.middleware import api_exception_response


class WireFormatRequestErrors:
    """A request Django cannot even build (a query string that is not UTF-8) is refused by
    `ASGIHandler.create_request` with an empty HTML 400; under /v1/ it is the API's own 400,
    in the caller's wire format, like every other refusal of the API."""

    def create_request(self, scope, body_file):
        request, error_response = super().create_request(scope, body_file)
        if request is None and scope.get("path", "").startswith("/v1/"):
            from gateway.errors import GatewayError, anthropic_error_response, openai_error_response

            error = GatewayError(400, "The request URL is not valid UTF-8.", "invalid_request")
            render = anthropic_error_response if scope["path"].startswith("/v1/messages") else openai_error_response
            error_response = render(error)
        return request, error_response


class ApiASGIHandler(WireFormatRequestErrors, ASGIHandler):
    """Django's ASGIHandler, for everything but the hot path, with the API's own 400s."""


class InlineSecurityMiddleware(SecurityMiddleware):
    """Django's SecurityMiddleware without the two thread hops of a sync middleware under ASGI."""

    async def __acall__(self, request):
        # Host validation (DisallowedHost is a 400), as CommonMiddleware does for the admin.
        request.get_host()
        response = self.process_request(request)
        if response is None:
            response = await self.get_response(request)
        return self.process_response(request, response)


class HotPathHandler(WireFormatRequestErrors, ASGIHandler):
    """ASGIHandler with one inline middleware, inline signals and no per-request thread."""

    def load_middleware(self, is_async=False):
        self._view_middleware = []
        self._template_response_middleware = []
        # An exception that escapes a completion view is the API's JSON error, never Django's
        # HTML 500 (gateway/middleware.py).
        self._exception_middleware = [api_exception_response]
        view = convert_exception_to_response(self._get_response_async)
        self._middleware_chain = convert_exception_to_response(InlineSecurityMiddleware(view))

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            raise ValueError(f"Django can only handle ASGI/HTTP connections, not {scope['type']}.")
        await self.handle(scope, receive, send)

    async def handle(self, scope, receive, send):
        try:
            body_file = await self.read_body(receive)
        except RequestAborted:
            return
        set_script_prefix(get_script_prefix(scope))
        signals.request_started.send(sender=self.__class__, scope=scope)
        request, error_response = self.create_request(scope, body_file)
        if request is None:
            body_file.close()
            await self.send_response(error_response, send)
            error_response.close()
            return

        async def process_request(request, send):
            response = await self.run_get_response(request)
            try:
                await self.send_response(response, send)
            except asyncio.CancelledError:
                pass  # the client went away while we were sending
            return response

        # As Django does: watch for a disconnect while the view runs, and cancel the view if so
        # (a cancelled request is still recorded and settled: gateway.lifecycle).
        tasks = [
            asyncio.create_task(self.listen_for_disconnect(receive)),
            asyncio.create_task(process_request(request, send)),
        ]
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in tasks:
            if task.done():
                try:
                    task.result()
                except RequestAborted:
                    pass
                except AssertionError:
                    body_file.close()
                    raise
            else:
                task.cancel()
                try:
                    await task
                except asyncio.CancelledError:
                    pass
        try:
            response = tasks[1].result()
        except asyncio.CancelledError:
            signals.request_finished.send(sender=self.__class__)
        else:
            response.close()  # sends request_finished
        body_file.close()
