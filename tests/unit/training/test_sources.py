"""training/data: every source loads into the same shape of Source, and bad files are refused clearly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from modelport.errors import BadRequest, InvalidArtifact
from modelport.training.data.builtin import load_builtin
from modelport.training.data.csv import load_csv
from modelport.training.data.npz import load_npz
from modelport.training.data.sources import load_source
from modelport.training.spec import DataSpec
from tests.conftest import MNIST


def test_mnist_folder_has_its_own_test_split_and_a_stable_hash() -> None:
    spec = DataSpec(source="mnist", path=str(MNIST), max_samples=100, max_test_samples=50)
    source = load_source(spec)
    assert source.train.x.shape == (100, 28, 28) and source.test is not None and source.test.x.shape[0] == 50
    assert source.classes == [str(i) for i in range(10)]
    assert source.sha256 == load_source(spec).sha256 and len(source.sha256) == 64


@pytest.mark.parametrize("name", ["digits", "iris", "wine", "breast_cancer"])
def test_builtin_sets(name: str) -> None:
    source = load_builtin(name)
    assert source.train.x.dtype == np.float32 and source.train.y.dtype == np.int64 and source.test is None
    assert source.classes is not None and len(source.classes) == int(source.train.y.max()) + 1


def test_npz_with_test_split_and_labels(tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    np.savez(
        path,
        x=np.ones((6, 2)),
        y=np.array([0, 1, 0, 1, 0, 1]),
        x_test=np.zeros((2, 2)),
        y_test=np.array([1, 0]),
        labels=np.array(["cat", "dog"]),
    )
    source = load_npz(path)
    assert source.test is not None and source.test.x.shape == (2, 2) and source.classes == ["cat", "dog"]


def test_npz_refuses_pickled_objects_and_missing_arrays(tmp_path: Path) -> None:
    path = tmp_path / "bad.npz"
    np.savez(path, x=np.array([{"a": 1}], dtype=object), y=np.array([0]))
    with pytest.raises(InvalidArtifact, match="pickled"):
        load_npz(path)
    np.savez(path, inputs=np.ones((2, 2)))
    with pytest.raises(InvalidArtifact, match="no array"):
        load_npz(path)


def test_csv_with_string_labels(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text("a,b,kind\n1,2,dog\n3,4,cat\n5,6,dog\n")
    source = load_csv(path)
    np.testing.assert_array_equal(source.train.x, [[1, 2], [3, 4], [5, 6]])
    assert source.classes == ["cat", "dog"] and source.train.y.tolist() == [1, 0, 1]
    by_name = load_csv(path, target="a", features=["b"])
    assert by_name.train.y.dtype == np.int64 and by_name.classes is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a,b\nx,1\n", "column 'a' is not numeric"),
        ("a,b\n1,2,3\n", "line 2"),
        ("a,b\n", "at least one example"),
        ("a,b\nnan,1\n", "NaN"),
    ],
)
def test_csv_problems_are_named(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "d.csv"
    path.write_text(text)
    with pytest.raises(InvalidArtifact, match=message):
        load_csv(path)


def test_parquet(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    from modelport.training.data.parquet import load_parquet

    pq.write_table(pa.table({"f1": [1.0, 2.0], "f2": [3, 4], "label": ["no", "yes"]}), str(tmp_path / "d.parquet"))
    source = load_parquet(tmp_path / "d.parquet")
    assert source.train.x.tolist() == [[1.0, 3.0], [2.0, 4.0]] and source.classes == ["no", "yes"]


def test_dataset_by_name_goes_through_the_callback(tmp_path: Path) -> None:
    np.savez(tmp_path / "reg.npz", x=np.ones((4, 3)), y=np.arange(4.0))
    asked: list[str] = []

    def resolve(name: str) -> Path:
        asked.append(name)
        return tmp_path / "reg.npz"

    source = load_source(DataSpec(source="dataset", name="my-data"), resolve)
    assert asked == ["my-data"] and source.train.y.dtype == np.float32
    with pytest.raises(BadRequest, match="resolve datasets"):
        load_source(DataSpec(source="dataset", name="my-data"))


def test_missing_path_is_a_bad_request(tmp_path: Path) -> None:
    with pytest.raises(BadRequest, match="does not exist"):
        load_source(DataSpec(source="csv", path=str(tmp_path / "none.csv")))
