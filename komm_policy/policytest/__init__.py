"""Policy test files (`*.test.toml` beside the policies) and `komm-policy test`.

`spec` reads a test file into cases, `requests` turns a case's request into the hook payload
Stalwart would send, `tables` turns its table rows into an in-memory directory (rows checked
against the directory schema), `runner` decides every case in-process and compares, and
`report` writes text, JSON, JUnit XML and coverage.  The format is documented in
docs/tooling.md.
"""
