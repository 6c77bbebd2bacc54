"""The UI over HTTP as an attacker sees it: no file outside the exports can be read
through gradio's file routes, and the API key never reaches a page or the API."""

from __future__ import annotations

import urllib.error
import urllib.request

import pytest

from rag import Assistant, Settings

from conftest import serve_app

SENTINEL = "sk-SENTINEL-ui-0123456789"



def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=20) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


@pytest.mark.slow
def test_no_path_outside_the_exports_is_served(index_copy, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET-CONTENT")
    settings = Settings(data_dir=index_copy, mode="extractive", openai_api_key=SENTINEL)
    index_db = settings.chroma_path / "chroma.sqlite3"
    with serve_app(Assistant(settings)) as url:
        base = url.rstrip("/")
        targets = [str(secret), "/etc/passwd", str(index_db), f"{settings.data_dir}/exports/../chroma/chroma.sqlite3",
                   "../../../../etc/passwd", "..%2F..%2F..%2Fetc%2Fpasswd"]
        for target in targets:
            for route in ("/gradio_api/file=", "/file="):
                status, body = _get(base + route + target)
                assert b"TOP-SECRET" not in body and b"root:" not in body and b"SQLite format" not in body, \
                    (route, target, status)
                assert status != 200 or len(body) < 1000, (route, target, status)
        export = settings.data_dir / "exports" / "probe.md"
        export.write_text("exported answer")
        status, body = _get(f"{base}/gradio_api/file={export}")
        assert status == 200 and body == b"exported answer"  # the one folder that is served


@pytest.mark.slow
def test_api_key_never_reaches_the_browser(index_copy):
    settings = Settings(data_dir=index_copy, mode="extractive", openai_api_key=SENTINEL,
                        openai_base_url="http://user:pw-SECRET@127.0.0.1:9/v1")
    with serve_app(Assistant(settings)) as url:
        base = url.rstrip("/")
        for path in ("/", "/config", "/gradio_api/info", "/gradio_api/openapi.json", "/info"):
            status, body = _get(base + path)
            assert SENTINEL.encode() not in body and b"pw-SECRET" not in body, path
