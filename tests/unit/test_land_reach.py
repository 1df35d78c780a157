"""Which files a Spark landing lets its executors read where they are (`pipeline.land.within`):
only those inside the data directory, links followed, so a link from inside it to a file
elsewhere is copied in, not read through."""

from __future__ import annotations

from pathlib import Path

from pipeline.land import within


def test_a_file_is_within_the_data_directory_only_when_it_resolves_inside(
        tmp_path: Path) -> None:
    home, elsewhere = tmp_path / "home", tmp_path / "elsewhere"
    (home / "uploads").mkdir(parents=True)
    elsewhere.mkdir()
    inside, outside = home / "uploads" / "apc.csv", elsewhere / "apc.csv"
    inside.write_text("x")
    outside.write_text("x")
    link = home / "uploads" / "linked.csv"
    link.symlink_to(outside)
    assert within(inside, home)
    assert within(home / "uploads" / ".." / "uploads" / "apc.csv", home)
    assert not within(outside, home)
    assert not within(home / ".." / "elsewhere" / "apc.csv", home)
    assert not within(link, home)  # the link leads out
    assert not within(tmp_path / "home-other" / "apc.csv", home)  # a name that starts alike
