"""The one CSV reader: rows, dicts, and one InputError naming the file."""
import pytest

from kface.errors import InputError
from kface.util.tables import read_csv_dicts, read_csv_rows


def test_rows_drop_a_byte_order_mark(tmp_path):
    path = tmp_path / "t.csv"
    path.write_bytes("\ufeffpath,identity\na.jpg,A\n".encode("utf-8"))
    assert read_csv_rows(path, "manifest") == [["path", "identity"], ["a.jpg", "A"]]


def test_dicts_skip_blank_lines_and_pad_short_rows(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("label,distance,split\n1,0.5\n\n0,0.9,test\n", encoding="utf-8")
    assert read_csv_dicts(path, "distances file") == [
        {"label": "1", "distance": "0.5", "split": ""}, {"label": "0", "distance": "0.9", "split": "test"}]


@pytest.mark.parametrize("content", [b"\xff\xfe\x00bad", None])
def test_unreadable_file_is_one_input_error_naming_it(tmp_path, content):
    path = tmp_path / "t.csv"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(InputError, match=r"t\.csv: cannot read the pair file"):
        read_csv_rows(path, "pair file")
