"""The server's schema against what komm-policy reads: the schema file and the policy set.

`check_module` compares a module definition (`/schema?version=9`) with the tables the
replica will subscribe to.  Problems (the service stays not ready, the message names the
table and column): a table that is not there, a column that is not there, a column whose
SATS type does not fit the meaning the schema file gives it, a declared `primary_key` that
is neither the table's primary key nor a unique constraint (nor wider than one:
`directory.declared_keys`).  Warnings (reported, the
replica still runs): a private table (only the database owner's token sees its rows; with
any other token the subscription fails), a table under row-level security (the replica
holds only the rows the token's identity may see — possibly fewer than the policies
expect).  Both are visible in the v9 module definition (`table_access`,
`row_level_security`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from ..directory.declared_keys import key_problem
from ..directory.schema import Column, Schema, SchemaError, column_from_sats
from .schema import ModuleSchema

# A schema-file meaning may refine the meaning SpacetimeDB's type implies.
_REFINES = {"text": {"text", "address", "network", "enum"}, "enum": {"enum", "text"},
            "integer": {"integer", "timestamp"}, "identity": {"identity", "text"}}


@dataclass
class ModuleCheck:
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def server_columns(module: ModuleSchema, table: str) -> dict[str, Column]:
    """The table's columns with the meanings their SATS types imply (Refs resolved)."""
    out = {}
    for column in module.tables[table].columns:
        try:
            out[column.name] = column_from_sats(column.name,
                                                module.typespace.to_json(column.type))
        except SchemaError:
            out[column.name] = Column(column.name, "unsupported",
                                      storage=module.describe(column.type))
    return out


def check_module(module: ModuleSchema, tables: Iterable[str], schema: Schema | None,
                 where: str) -> ModuleCheck:
    """Check every table in `tables` (and, where the schema file describes it, its
    columns) against `module`.  `where` names the database in messages."""
    result = ModuleCheck()
    for name in sorted(set(tables)):
        table = module.tables.get(name)
        if table is None:
            near = [t for t in module.tables if t.lower() == name.lower()]
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            result.problems.append(f"{where}: no table {name!r}{hint}")
            continue
        if table.access == "private":
            result.warnings.append(
                f"{where}: table {name!r} is private: only the database owner's token can "
                "subscribe to it")
        for sql in module.rls_filters(name):
            result.warnings.append(
                f"{where}: table {name!r} is under row-level security ({sql!r}): the "
                "replica holds only the rows this token's identity may see")
        wanted = schema.tables.get(name) if schema is not None else None
        if wanted is None:
            continue
        have = server_columns(module, name)
        for column in wanted.columns:
            got = have.get(column.name)
            if got is None:
                result.problems.append(f"{where}: table {name!r} has no column "
                                       f"{column.name!r}")
                continue
            mismatch = _mismatch(column, got)
            if mismatch:
                result.problems.append(
                    f"{where}: column {name}.{column.name} is "
                    f"{module.describe(table.column(column.name).type)}"  # type: ignore[union-attr]
                    f" on the server, but the schema file says {mismatch}")
        problem = key_problem(schema, wanted, table.keys(), where) if schema else None
        if problem is not None:
            result.problems.append(problem)
    return result


def _mismatch(wanted: Column, got: Column) -> str | None:
    """What the schema file says that the server's type contradicts, or None."""
    described = wanted.type + (" (optional)" if wanted.optional else "")
    if got.type == "unsupported" or wanted.type not in _REFINES.get(got.type, {got.type}):
        return described
    if wanted.optional != got.optional:
        return described
    if wanted.type == "enum" and got.type == "enum" and set(wanted.variants) != set(
            got.variants):
        return f"enum with variants {', '.join(wanted.variants)}"
    if wanted.type == "list" and wanted.element != got.element:
        return f"list of {wanted.element}"
    return None
