"""The ingestion token of a run: from the environment when given, else fresh and owner-only."""
from __future__ import annotations

import stat

from ingest.launch import TOKEN_FILE, run_token


def test_a_generated_token_is_fresh_per_start_and_readable_by_its_owner_only(tmp_path, monkeypatch):
    monkeypatch.delenv("ACCORD_INGEST_TOKEN", raising=False)
    (tmp_path / TOKEN_FILE).write_text("old\n")
    (tmp_path / TOKEN_FILE).chmod(0o644)  # a file left with a wider mode is not reused
    first, where = run_token("ACCORD_INGEST_TOKEN", tmp_path)
    assert where == str(tmp_path / TOKEN_FILE)
    assert (tmp_path / TOKEN_FILE).read_text().strip() == first and len(first) >= 43  # 256 bits
    assert stat.S_IMODE((tmp_path / TOKEN_FILE).stat().st_mode) == 0o600
    second, _ = run_token("ACCORD_INGEST_TOKEN", tmp_path)
    assert second != first


def test_a_token_from_the_environment_is_used_and_not_written(tmp_path, monkeypatch):
    monkeypatch.setenv("MY_TOKEN", "from-the-env")
    assert run_token("MY_TOKEN", tmp_path) == ("from-the-env", "$MY_TOKEN")
    assert not (tmp_path / TOKEN_FILE).exists()
