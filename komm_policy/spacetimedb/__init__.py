"""SpacetimeDB client: HTTP API, `v1.json.spacetimedb` subscription, SATS-JSON decoding.

- `http`: `SpacetimeHttp` (`/v1/identity`, `/sql`, `/schema?version=9`), `Endpoint`
  (`spacetimedb://HOST:PORT/DB`, `spacetimedb+https://…`), `quote_literal`.
- `sats`: the schema-driven decoder (rows as objects or arrays); `sats_types`: the SATS
  types it decodes.
- `schema`: the module definition (`RawModuleDefV9`): tables, columns, access, RLS.
- `protocol`: the WebSocket messages; `subscription`: the reconnecting subscriber.

The wire formats follow SpacetimeDB's source as cited in each module; the reference note is
`spacetimedb.md` in the project's shared references.
"""

from .http import Endpoint, SpacetimeError, SpacetimeHttp, SqlResult, quote_ident, quote_literal
from .sats import Decoder, SatsError, Typespace, Variant
from .schema import ModuleSchema, TableDef, parse_module

__all__ = [
    "Decoder",
    "Endpoint",
    "ModuleSchema",
    "SatsError",
    "SpacetimeError",
    "SpacetimeHttp",
    "SqlResult",
    "TableDef",
    "Typespace",
    "Variant",
    "parse_module",
    "quote_ident",
    "quote_literal",
]
