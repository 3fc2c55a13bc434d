"""Input specs -> shards, and the driver's checks before any Ray work (no Ray here)."""

import os

import pytest

from bertml import shards as sh
from bertml.output import OutputDir
from bertml.shards import InputError, resolve


@pytest.fixture()
def tree(tmp_path):
    for rel in ["in/a.parquet", "in/b.parquet", "in/data[1].parquet", "in/sub/old.parquet", "in/_SUCCESS",
                "in/.a.parquet.crc", "run[2024]/x.parquet"]:
        os.makedirs(os.path.dirname(tmp_path / rel), exist_ok=True)
        (tmp_path / rel).touch()
    return tmp_path


def keys(spec) -> list[str]:
    return [s.key for s in resolve(spec)]


def test_existing_paths_are_literal_even_with_glob_characters(tree):
    assert keys(str(tree / "in" / "data[1].parquet")) == ["data[1].parquet"]
    assert keys(str(tree / "run[2024]")) == ["x.parquet"]


def test_globs_match_within_a_folder_and_double_star_across(tree):
    assert keys(str(tree / "in" / "*.parquet")) == ["a.parquet", "b.parquet", "data[1].parquet"]  # not sub/
    assert keys(str(tree / "in" / "**" / "*.parquet")) == ["a.parquet", "b.parquet", "data[1].parquet", "sub/old.parquet"]
    assert keys(str(tree / "in" / "[ab].parquet")) == ["a.parquet", "b.parquet"]
    assert keys(str(tree / "in" / "[!a].parquet")) == ["b.parquet"]
    assert keys(str(tree / "in" / "?.parquet")) == ["a.parquet", "b.parquet"]
    assert keys(str(tree / "in")) == ["a.parquet", "b.parquet", "data[1].parquet", "sub/old.parquet"]  # hidden skipped
    with pytest.raises(InputError, match="no files found"):
        resolve(str(tree / "in" / "*.csv"))


def test_glob_edge_cases_follow_fnmatch_and_bracketed_folders_are_literal(tree):
    (tree / "in" / "x]y.parquet").touch()
    (tree / "run[2024]" / "y.parquet").touch()
    assert keys(str(tree / "run[2024]" / "*.parquet")) == ["x.parquet", "y.parquet"]  # folder taken as named
    assert keys(str(tree / "in" / "[!]]*.parquet")) == ["a.parquet", "b.parquet", "data[1].parquet", "x]y.parquet"]
    assert keys(str(tree / "in" / "[]x]*.parquet")) == ["x]y.parquet"]  # a leading ] is a member
    assert keys(str(tree / "*" / "[ax].parquet")) == ["in/a.parquet", "run[2024]/x.parquet"]
    with pytest.raises(InputError, match="not a valid glob"):
        resolve(str(tree / "in" / "[z-a]*.parquet"))


def test_a_file_named_twice_is_one_shard(tree):
    shards = resolve([str(tree / "in"), str(tree / "in" / "sub" / "old.parquet"), str(tree / "in" / "a.parquet")])
    assert sorted(s.path for s in shards) == sorted({s.path for s in shards})
    assert [s.key for s in shards] == ["a.parquet", "b.parquet", "data[1].parquet", "sub/old.parquet"]


def test_uris_with_globs_spaces_and_options_parse_or_fail_clearly():
    fs, path, prefix = sh.split_uri("mock:///bucket/my data/é/part-[0-3].parquet", "input")
    assert fs.type_name == "mock" and path == "bucket/my data/é/part-[0-3].parquet" and prefix == "mock://"
    fs, path, _ = sh.split_uri("mock:///bucket/x/part-?.parquet", "input")
    assert path == "bucket/x/part-?.parquet"  # a glob, not a query string
    fs, path, _ = sh.split_uri("mock:///bucket/x%20y/c%20*.parquet", "input")
    assert path == "bucket/x y/c *.parquet"  # escapes decoded in the glob part too
    assert sh.split_uri("mock:///bucket/dir/**/", "input")[1] == "bucket/dir/**"
    # options may hold slashes (a MinIO endpoint): they go to the filesystem, not the path
    opts = "?region=us-east-1&endpoint_override=http://localhost:9000"
    assert sh.split_uri("mock:///bucket/dir" + opts, "input")[1] == "bucket/dir"
    assert sh.split_uri("mock:///bucket/dir/*.parquet" + opts, "input")[1] == "bucket/dir/*.parquet"
    with pytest.raises(InputError, match="not a usable URI"):
        resolve("nosuch://bucket/x")


def test_output_inside_the_input_is_recognised_through_uri_options():
    """URI options (?region=...) do not hide that an output lies inside the input."""
    fs, _, _ = sh.split_uri("mock:///bucket/data/out?opt=1", "output", glob=False)
    assert sh.lister("mock:///bucket/data", fs)("bucket/data/out")
    assert sh.lister("mock:///bucket/data?opt=1", fs)("bucket/data/out/a.parquet")
    assert not sh.lister("mock:///bucket/data", fs)("bucket/data-2/out")
    assert sh.lister("mock:///bucket/data/**/*.parquet", fs)("bucket/data/out/a.parquet")
    assert not sh.lister("mock:///bucket/data/*.parquet", fs)("bucket/data/out/a.parquet")


def test_home_relative_output_is_expanded(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    out = OutputDir("~/scores")
    out.create()
    assert out.root == str(tmp_path / "scores") and os.path.isdir(tmp_path / "scores")
    assert not os.path.exists("~")
