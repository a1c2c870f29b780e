"""`python -m common.settings_doc` prints the README's configuration table from the Settings model,
so the table and the code cannot drift apart (tests/test_docs.py checks it)."""

from __future__ import annotations

from common.settings import Settings


def rows() -> list[tuple[str, str, str]]:
    out = []
    for name, field in Settings.model_fields.items():
        default = field.default if field.default_factory is None else field.default_factory()  # type: ignore[call-arg]
        if name == "workers":
            shown = "CPU count"
        elif default is None:
            shown = "unset"
        elif default == ():  # a list parsed from text (API keys): shown as the text it is read from
            shown = "''"
        else:
            shown = str(default) if not isinstance(default, str) else repr(default)
        out.append((f"VECQ_{name.upper()}", shown, field.description or ""))
    return out


def markdown_table() -> str:
    lines = ["| Variable | Default | Meaning |", "|---|---|---|"]
    lines += [f"| `{var}` | `{default}` | {desc} |" for var, default, desc in rows()]
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown_table())
