"""The built-in fake provider behind `manage.py mockllm` (docs/design.md#management-commands); see
`server` for the directives."""

from gateway.mock.server import MockApp, MockSettings, build_app, parse_directives

__all__ = ["MockApp", "MockSettings", "build_app", "parse_directives"]
