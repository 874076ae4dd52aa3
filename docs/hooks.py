"""MkDocs hooks for the docs site (mkdocs.yml `hooks:`): pages that list what the code
defines are filled from the code at build time, so they cannot drift from it.

`{{ problem_codes }}` in a page becomes the compiler's problem codes
(`statemachine.errors.PROBLEM_CODES`) as a list; `{{ storage_versions }}` the schema versions
each store writes, and `{{ sqlite_tables }}` / `{{ postgres_tables }}` the statements that
create a new store's tables.
"""

from __future__ import annotations

from typing import Any


def on_page_markdown(markdown: str, **_: Any) -> str:
    if "{{ problem_codes }}" in markdown:
        from statemachine.errors import PROBLEM_CODES

        listing = "\n".join(f"- `{code}`" for code in PROBLEM_CODES)
        markdown = markdown.replace("{{ problem_codes }}", listing)
    if "{{ storage_versions }}" in markdown:
        from checkpoints import postgres, sqlite_file

        markdown = markdown.replace(
            "{{ storage_versions }}",
            f"| store | schema version this code writes |\n| --- | ---: |\n"
            f"| SQLite file (its `schema_version` table; `PRAGMA application_id` marks "
            f"the file as ours) | {sqlite_file.SCHEMA_VERSION} |\n"
            f"| PostgreSQL schema (`schema_version` table) | {postgres.SCHEMA_VERSION} |")
    for name, dialect in (("sqlite_tables", "SQLITE"), ("postgres_tables", "POSTGRES")):
        if f"{{{{ {name} }}}}" in markdown:
            from checkpoints import sql_dialect
            from checkpoints.sql_schema import tables

            ddl = tables(getattr(sql_dialect, dialect)).strip()
            if dialect == "POSTGRES":  # and the function taking a lease reads the head with
                from checkpoints.postgres import HEAD_MARK_FUNCTION

                ddl += "\n" + HEAD_MARK_FUNCTION.strip()
            markdown = markdown.replace(f"{{{{ {name} }}}}", f"```sql\n{ddl}\n```")
    return markdown


def on_files(files: Any, config: Any) -> Any:
    """The examples' diagrams (examples/*.svg) are served as assets/<name>.svg, and the
    benchmarks' charts (benchmarks/charts/*.png) as assets/charts/<name>.png, read from where
    they are kept (no copy in docs/ to drift)."""
    from pathlib import Path

    from mkdocs.structure.files import File

    root = Path(config["config_file_path"]).parent
    for svg in sorted((root / "examples").glob("*.svg")):
        files.append(File.generated(config, f"assets/{svg.name}", abs_src_path=str(svg)))
    for chart in sorted((root / "benchmarks" / "charts").glob("*.png")):
        files.append(File.generated(config, f"assets/charts/{chart.name}",
                                    abs_src_path=str(chart)))
    return files
