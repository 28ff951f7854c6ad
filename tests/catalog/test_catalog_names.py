import pytest

from citymesh.catalog.names import UnsafeName, check_name, dataset_path, resolve_inside


@pytest.mark.parametrize(
    "name",
    [
        "../etc/passwd",
        "..",
        "a/b",
        "/abs",
        "",
        ".hidden",
        "a..b",
        "x" * 129,
        "a\\b",
        "name\x00",
    ],
)
def test_name_escaping_rejected(name):
    with pytest.raises(UnsafeName, match="invalid dataset name"):
        check_name(name)


def test_name_valid_maps_inside(tmp_path):
    path = dataset_path(tmp_path, "flights-ewr_2013.v1")
    assert path == tmp_path.resolve() / "flights-ewr_2013.v1.parquet"


def test_name_symlink_escape_rejected(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    outside = tmp_path / "outside.parquet"
    outside.write_bytes(b"")
    (data / "trap.parquet").symlink_to(outside)
    with pytest.raises(UnsafeName, match="outside the data folder"):
        dataset_path(data, "trap")


def test_resolve_inside_rejects_climbing(tmp_path):
    assert resolve_inside(tmp_path, "a/b.csv") == tmp_path.resolve() / "a" / "b.csv"
    with pytest.raises(UnsafeName, match="outside the data folder"):
        resolve_inside(tmp_path, "a/../../x")
    with pytest.raises(UnsafeName, match="absolute"):
        resolve_inside(tmp_path, "/etc/passwd")
