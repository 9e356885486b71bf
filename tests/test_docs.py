"""The documentation stays true to the code: every setting is in the reference, every link
points at a file that exists."""

import re
import typing
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_search_setting_is_in_the_configuration_reference() -> None:
    from selmatch_tune.results.tracking import flatten
    from selmatch_tune.settings.config import SearchConfig

    text = (ROOT / "docs" / "configuration.md").read_text()
    keys = [k for k in flatten(SearchConfig().to_dict()) if ".dsa." not in k]
    missing = [k for k in keys if f"`{k}`" not in text]
    assert not missing, f"settings missing from docs/configuration.md: {missing}"


def test_the_configuration_table_is_the_one_the_declarations_make() -> None:
    """docs/configuration.md's table is generated from every setting's declaration (its help,
    its symbol, the search's option for it): regenerate it with python -m
    selmatch_tune.reference after changing a setting."""
    from selmatch_tune.reference import PAGE, page

    text = PAGE.read_text()
    assert page(text) == text, "run: python -m selmatch_tune.reference"


def test_every_setting_of_a_search_is_declared_with_its_help() -> None:
    import dataclasses

    from selmatch.core.config import Config, setting_of
    from selmatch_tune.settings.config import SearchConfig

    undeclared: list[str] = []
    seen: set[type] = set()
    todo: list[type] = [SearchConfig]
    while todo:
        cls = todo.pop()
        seen.add(cls)
        hints = typing.get_type_hints(cls)
        for field in dataclasses.fields(cls):
            declared = setting_of(field)
            if declared is None or not declared.help:
                undeclared.append(f"{cls.__name__}.{field.name}")
            inner = [hints[field.name], *typing.get_args(hints[field.name])]
            todo += [
                t for t in inner if isinstance(t, type) and issubclass(t, Config) and t not in seen
            ]
    assert not undeclared, f"settings without a declaration: {sorted(set(undeclared))}"


def test_relative_links_in_the_docs_point_at_files() -> None:
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    broken = []
    for page in pages:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if "://" in target or target.startswith("mailto:"):
                continue
            if not (page.parent / target).exists():
                broken.append(f"{page.relative_to(ROOT)} -> {target}")
    assert not broken, broken
