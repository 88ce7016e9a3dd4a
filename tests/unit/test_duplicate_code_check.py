"""The duplicate-code check of `make lint` (scripts/duplicate_code.py): reading the report, the allow-list."""

import pytest

from scripts.duplicate_code import Duplicate, find_duplicates, parse_report, read_allowed

REPORT = """
12 similar lines in 2 files
==services/a.py:[70:82]
==services/b.py:[112:126]
       if config.num_threads:
           torch.set_num_threads(config.num_threads)

7 similar lines in 3 files
==shared/x.py:[1:8]
==shared/y.py:[3:10]
==shared/z.py:[5:12]
       pass
TOTAL lines=100 duplicates=19 percent=19.00
"""


def test_the_report_is_read_into_pairs_of_places():
    assert parse_report(REPORT) == [
        Duplicate(12, ("services/a.py:[70:82]", "services/b.py:[112:126]")),
        Duplicate(7, ("shared/x.py:[1:8]", "shared/y.py:[3:10]", "shared/z.py:[5:12]")),
    ]
    assert parse_report(REPORT)[0].files == frozenset({"services/a.py", "services/b.py"})


def test_an_allowed_pair_needs_its_reason(tmp_path):
    allowed = tmp_path / "allowed.txt"
    allowed.write_text("# comment\n\nservices/b.py services/a.py  # the two protocols differ on purpose\n")
    assert read_allowed(allowed) == {
        frozenset({"services/a.py", "services/b.py"}): "the two protocols differ on purpose"
    }
    allowed.write_text("services/b.py services/a.py\n")
    with pytest.raises(SystemExit, match=r"allowed.txt:1: want 'FILE_A FILE_B  # reason'"):
        read_allowed(allowed)


def test_pylint_finds_a_real_copy(tmp_path, monkeypatch):
    body = "".join(f"    total = total * {i} + len(str(total)) - {i}\n" for i in range(8))
    for name in ("one.py", "two.py"):
        (tmp_path / name).write_text(f"def f_{name[:3]}(total):\n{body}    return total\n")
    monkeypatch.setattr("scripts.duplicate_code.ROOT", tmp_path)
    [found] = find_duplicates(["one.py", "two.py"])
    assert found.files == frozenset({"one.py", "two.py"}) and found.lines >= 6
