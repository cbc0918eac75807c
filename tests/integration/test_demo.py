import re


def test_demo_runs_on_tiny_and_report_references_existing_plots(tmp_path, ray_local):
    from creformer.demo import run

    report = run(tmp_path / "demo", config="tiny", overrides=("data.shard_size_mb=2",))
    page = report.read_text()
    images = re.findall(r'<img src="([^"]+)"', page)
    assert images and all((report.parent / img).exists() for img in images)
    assert "prepare elementary" in page and "not yet implemented" in page
