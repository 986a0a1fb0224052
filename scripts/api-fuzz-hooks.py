"""schemathesis hooks for scripts/api-fuzz.sh (loaded through SCHEMATHESIS_HOOKS).

One workaround, no hooks: Hypothesis describes a strategy's lambdas by
parsing the source file they come from, and does so eagerly while
validating `st.recursive` strategies, deep in the stack. On CPython 3.11
(Debian 12's, and pyenv's 3.11.7) `ast.parse` called that deep can fail
with "SystemError: AST constructor recursion depth mismatch" (CPython
gh-106905), which schemathesis reports as a runtime error of the
operation being generated for. The description is only ever shown in
messages, so a failed parse gets a placeholder instead.
"""

import hypothesis.internal.lambda_sources as _lambda_sources

_describe = _lambda_sources._lambda_description


def _described_or_placeholder(f, *args, **kwargs):
    try:
        return _describe(f, *args, **kwargs)
    except SystemError:
        return "lambda: <source not parsed>"


_lambda_sources._lambda_description = _described_or_placeholder
