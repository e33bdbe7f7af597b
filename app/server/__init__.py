"""The HTTP API: the ASGI app and its middleware, the status, console, admin and stored-response routes, and the
OpenAPI document (the proxied endpoints themselves are ``app.proxy``).
"""
