"""ctlib.viz.publish: a run's figure files copied into the publication folder."""

from __future__ import annotations

import pytest

from ctlib.viz import publish


def test_publish_copies_every_file_under_its_name(tmp_path):
    run_figures = tmp_path / "run" / "figures"
    run_figures.mkdir(parents=True)
    files = []
    for name, data in (("a.png", b"\x89PNG one"), ("a.pdf", b"%PDF two"), ("a.json", b'{"run_id": "r"}')):
        (run_figures / name).write_bytes(data)
        files.append(run_figures / name)
    published = tmp_path / "repo" / "figures"
    published.mkdir(parents=True)
    (published / "a.png").write_bytes(b"old")  # an earlier published version is replaced

    copies = publish.publish_figures(files, published)

    assert copies == [published / f.name for f in files]
    assert [c.read_bytes() for c in copies] == [f.read_bytes() for f in files]
    assert sorted(p.name for p in published.iterdir()) == ["a.json", "a.pdf", "a.png"]  # no temporaries left


def test_publish_refuses_a_figure_that_was_not_saved(tmp_path):
    (tmp_path / "a.png").write_bytes(b"png")
    with pytest.raises(FileNotFoundError, match="b.pdf"):
        publish.publish_figures([tmp_path / "a.png", tmp_path / "b.pdf"], tmp_path / "out")
    assert not (tmp_path / "out" / "a.png").exists()  # nothing is published when one file is missing
