"""schemathesis hooks for scripts/api-fuzz.sh (loaded through SCHEMATHESIS_HOOKS).

A workaround and one hook. The workaround: Hypothesis describes a strategy's lambdas by
parsing the source file they come from, and does so eagerly while
validating `st.recursive` strategies, deep in the stack. On CPython 3.11
(Debian 12's, and pyenv's 3.11.7) `ast.parse` called that deep can fail
with "SystemError: AST constructor recursion depth mismatch" (CPython
gh-106905), which schemathesis reports as a runtime error of the
operation being generated for. The description is only ever shown in
messages, so a failed parse gets a placeholder instead. The hook
(`map_headers`, below) gives each request a fresh Idempotency-Key.
"""

import uuid

import hypothesis.internal.lambda_sources as _lambda_sources
import schemathesis

_describe = _lambda_sources._lambda_description


def _described_or_placeholder(f, *args, **kwargs):
    try:
        return _describe(f, *args, **kwargs)
    except SystemError:
        return "lambda: <source not parsed>"


_lambda_sources._lambda_description = _described_or_placeholder


@schemathesis.hook
def map_headers(ctx, headers):
    """A fresh Idempotency-Key wherever a valid one was drawn, as a client
    makes one per intent. A key reused with the same body replays the
    first response by design, the id of a BMC deleted since included,
    which the stateful phase then reports as "created resource not found"
    (ST302). Keys the API must refuse (empty, too long, not visible ASCII)
    are sent as drawn, so their rejection is still tested; replays
    themselves are the API's own tests' (routes::machines_tests). Done at
    generation, not in `before_call`: a request edited there is revalidated
    and loses what a check took out of it (its Authorization, for ST203)."""
    for name, key in list((headers or {}).items()):
        if name.lower() == "idempotency-key" and isinstance(key, str):
            if 0 < len(key) <= 200 and key.isascii() and key.isprintable():
                headers[name] = f"{key}-{uuid.uuid4().hex}"
    return headers
