"""The error tree and the status enum are each spelled once (issue #17): pure checks, no stack."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from common import errors
from common.status import TERMINAL, JobStatus

ROOT = Path(__file__).resolve().parent.parent
SOURCES = [p for d in ("api", "common", "worker", "vecq") for p in (ROOT / d).rglob("*.py")]


@pytest.mark.parametrize("cls", list(errors.CLASS_BY_CODE.values()), ids=lambda c: c.__name__)
def test_every_error_round_trips_through_its_dict(cls: type[errors.VecqError]) -> None:
    original = cls("what went wrong", "vectors[3]")
    again = errors.from_dict(original.to_dict())
    assert type(again) is cls
    assert (again.code, again.message, again.field, again.status) == (cls.code, "what went wrong", "vectors[3]",
                                                                      errors.STATUS_BY_CODE[cls.code])


def test_codes_are_unique_and_statuses_are_http_errors() -> None:
    tree = [cls for cls in errors._tree(errors.VecqError) if cls.__module__ == errors.__name__]  # not the client's
    codes = [cls.code for cls in tree if cls is not errors.JobError]
    assert len(codes) == len(set(codes)), codes
    assert all(400 <= status < 600 for status in errors.STATUS_BY_CODE.values())
    assert errors.STATUS_BY_CODE["canceled"] == 409 and errors.STATUS_BY_CODE["timeout"] == 504


def test_an_unknown_code_stays_visible() -> None:
    error = errors.from_dict({"code": "from_a_newer_server", "message": "m", "field": None})
    assert type(error) is errors.VecqError and error.code == "from_a_newer_server" and error.status == 500
    assert errors.VecqError.code == "internal"  # the instance's code did not leak into the class


def test_subclasses_are_caught_by_their_family() -> None:
    with pytest.raises(errors.Conflict):
        raise errors.from_dict({"code": "canceled", "message": "job canceled"})
    with pytest.raises(errors.JobError):
        raise errors.from_dict({"code": "poisoned", "message": "each delivery lost its worker"})


def test_terminal_statuses_are_the_enums() -> None:
    assert {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED} == TERMINAL


def test_terminal_statuses_and_the_status_table_are_defined_once() -> None:
    """No module but common/status.py spells the terminal set, and no Lua script names a status: the scripts
    are given them as arguments. No module but common/errors.py maps codes to HTTP statuses."""
    literal_set = re.compile(r"""["']succeeded["'],\s*["']failed["'],\s*["']canceled["']""")
    lua_status = re.compile(r"""(==|~=)\s*'(queued|running|succeeded|failed|canceled)'""")
    code_table = re.compile(r"""\{\s*["'](invalid|not_found|conflict)["']\s*:\s*4\d\d""")
    for path in SOURCES:
        text = path.read_text()
        where = path.relative_to(ROOT)
        assert not lua_status.search(text), f"{where} names a job status in Lua"
        assert not code_table.search(text), f"{where} has its own code -> status table"
        if where != Path("common/status.py"):
            assert not literal_set.search(text), f"{where} spells the terminal statuses"


def test_no_raw_eval_calls() -> None:
    """Lua goes through common/scripts.py, the one place that sends EVALSHA and loads a script Redis lost (also
    in pipelines, without a SCRIPT EXISTS before each): elsewhere, no EVAL, EVALSHA or register_script."""
    owner = ROOT / "common" / "scripts.py"
    for path in SOURCES:
        if path != owner:
            text = path.read_text()
            assert not re.search(r"\.(eval|evalsha|register_script)\(", text), path.relative_to(ROOT)
