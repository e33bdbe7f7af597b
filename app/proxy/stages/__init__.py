"""The stages of a proxied request, in the order ``app.proxy.handler`` runs them; each returns a value (or raises
an OpenAI error) instead of branching in the handler:

  routing    the model for the task within the key's allow-lists   → a ``Route``
  caching    a kept answer, or an identical request's generation   → answered, or a ``Flight`` to lead
  quota      the key's quotas: tokens reserved, a concurrency slot  → its ``x-ratelimit-*`` headers
  fallback   the route's places in order                            → the answer relayed, or the last failure
  attempt    one place: ``backend.lease`` → send → first events → ``relay``; the lease says the one verdict

Stages never import ``app.proxy.observers`` (a checked contract): what a request did reaches the metrics, the
log, the trace and the quota charge only as its outcome, after the last byte.
"""
