"""The documentation stays true to the code: every setting is in the reference, every link
points at a file that exists."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_search_setting_is_in_the_configuration_reference() -> None:
    from selmatch_tune.config import SearchConfig
    from selmatch_tune.tracking import flatten

    text = (ROOT / "docs" / "configuration.md").read_text()
    keys = [k for k in flatten(SearchConfig().to_dict()) if ".dsa." not in k]
    missing = [k for k in keys if f"`{k}`" not in text]
    assert not missing, f"settings missing from docs/configuration.md: {missing}"


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
