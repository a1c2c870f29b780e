"""The README stays true to the code: every setting is documented, and the two commands are shown."""

from __future__ import annotations

from common.settings import Settings
from vecq.stack import ROOT


def test_every_setting_is_in_the_readme() -> None:
    readme = (ROOT / "README.md").read_text()
    missing = [f"VECQ_{name.upper()}" for name in Settings.model_fields if f"`VECQ_{name.upper()}`" not in readme]
    assert not missing, f"README configuration table lacks {missing}; run python -m common.settings_doc"


def test_readme_shows_the_two_commands() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "make run" in readme and "make test" in readme
