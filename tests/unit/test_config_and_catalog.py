"""Settings parsing, secret masking and the catalog schema (pure logic, no services)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from mm_opensearch.catalog import CatalogSchema, content_hash, parse_instant, read_catalog
from mm_opensearch.config import Settings, mask_url
from mm_opensearch.errors import ConfigError
from mm_opensearch.judgments import load_click_pairs, load_qrels, load_queries


def test_comma_separated_env_values_become_lists(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MMOS_OPENSEARCH_HOSTS", "https://a:9200, https://b:9200")
    monkeypatch.setenv("MMOS_TEXT_FIELDS", "prod_name^3,detail_desc")
    settings = Settings()
    assert settings.opensearch_hosts == ["https://a:9200", "https://b:9200"]
    assert CatalogSchema.from_settings(settings).text_fields == {"prod_name": 3.0, "detail_desc": 1.0}


def test_secrets_are_never_printed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MMOS_OPENSEARCH_PASSWORD", "hunter2")
    monkeypatch.setenv("MMOS_REDIS_URL", "redis://:s3cret@redis:6379/0")
    settings = Settings()
    shown = json.dumps(settings.redacted()) + repr(settings)
    assert "hunter2" not in shown and "s3cret" not in shown
    assert settings.opensearch_password is not None
    assert settings.opensearch_password.get_secret_value() == "hunter2"


def test_malformed_boost_names_the_field() -> None:
    with pytest.raises(ConfigError, match="title\\^high"):
        CatalogSchema.from_settings(Settings(text_fields=["title^high"]))


def _write_catalog(path: Path, rows: list[dict]) -> Path:
    with gzip.open(path, "wt") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return path


def test_catalog_with_other_field_names_reads_by_configuration(tmp_path: Path) -> None:
    path = _write_catalog(
        tmp_path / "hm.jsonl.gz",
        [{"article_id": 7, "prod_name": "Strap top", "detail_desc": "Jersey top", "img": "imgs/7.jpg"},
         {"article_id": 8, "prod_name": "Shorts", "detail_desc": "", "img": None}],
    )
    schema = CatalogSchema(id_field="article_id", text_fields={"prod_name": 1.0, "detail_desc": 1.0}, image_field="img")
    first, second = read_catalog(path, schema)
    assert first.id == "7" and first.text == "Strap top. Jersey top"
    assert first.image == str(tmp_path / "imgs/7.jpg")
    assert second.text == "Shorts" and second.image is None
    assert first.source["prod_name"] == "Strap top"  # the whole document is kept for BM25


def test_product_without_id_is_refused_with_line_and_fix(tmp_path: Path) -> None:
    path = _write_catalog(tmp_path / "c.jsonl.gz", [{"id": "1", "title": "a"}, {"title": "no id"}])
    with pytest.raises(ConfigError, match=r"c.jsonl.gz:2: .*'id'.*MMOS_ID_FIELD"):
        list(read_catalog(path, CatalogSchema()))


def test_content_hash_changes_with_inputs() -> None:
    assert content_hash("a", "x.jpg") == content_hash("a", "x.jpg")
    assert content_hash("a", "x.jpg") != content_hash("a", "y.jpg")
    assert content_hash("a", None) != content_hash("b", None)


def test_queries_qrels_and_click_pairs(tmp_path: Path) -> None:
    (tmp_path / "q.tsv").write_text("query_id\tsplit\ttemplate\tquery\nq1\tval\tt\tred dress\nq2\ttrain\tt\tshoes\n")
    (tmp_path / "r.tsv").write_text("query_id\tproduct_id\tgrade\nq1\t10\t2\nq1\t11\t1\n")
    (tmp_path / "c.tsv").write_text("query\tproduct_id\nred dress\t10\nred dress\t12\nshoes\t3\n")
    assert [q.id for q in load_queries(tmp_path / "q.tsv", split="val")] == ["q1"]
    assert load_qrels(tmp_path / "r.tsv") == {"q1": {"10": 2, "11": 1}}
    queries, qrels = load_click_pairs(tmp_path / "c.tsv")
    assert [q.text for q in queries] == ["red dress", "shoes"]
    assert qrels[queries[0].id] == {"10": 1, "12": 1}


def test_missing_tsv_column_is_named(tmp_path: Path) -> None:
    (tmp_path / "r.tsv").write_text("query_id\tdoc\tgrade\n")
    with pytest.raises(ConfigError, match="product_id"):
        load_qrels(tmp_path / "r.tsv")


def test_updated_at_values_parse_to_comparable_utc_instants() -> None:
    assert parse_instant("2026-11-30T10:00:00Z") == parse_instant("2026-11-30T11:00:00+01:00")
    assert parse_instant("2026-11-30T10:00:00") == parse_instant("2026-11-30T10:00:00Z")  # naive = UTC
    assert parse_instant("2026-11-30T10:00:00.001Z") > parse_instant("2026-11-30T10:00:00")
    assert parse_instant(None) is None and parse_instant("") is None


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("http://admin:hunter2@search-1:9200", "http://admin:****@search-1:9200"),
        ("https://TOKEN123@search-1:9200", "https://****@search-1:9200"),  # a lone user part is often a token
        ("http://admin:p@ss@host/x", "http://admin:****@host/x"),  # a raw '@' in the password
        ("redis://:hunter2@redis:6379/0", "redis://:****@redis:6379/0"),
        ("redis://redis:6379/0?password=hunter2&db=1", "redis://redis:6379/0?password=****&db=1"),
        ("https://search-1:9200", "https://search-1:9200"),
        ("not a url", "not a url"),
    ],
)
def test_mask_url_hides_credentials_and_keeps_where_it_points(url: str, shown: str) -> None:
    assert mask_url(url) == shown


def test_redacted_masks_credentials_inside_url_valued_settings() -> None:
    settings = Settings(
        opensearch_hosts="http://admin:hunter2@search-1:9200,https://search-2:9200",
        redis_url="redis://default:s3cret@redis:6379/0",
        api_key="k3y",
    )
    shown = settings.redacted()
    assert shown["opensearch_hosts"] == ["http://admin:****@search-1:9200", "https://search-2:9200"]
    assert shown["redis_url"] == "redis://default:****@redis:6379/0"
    assert shown["api_key"] == "**********"
    text = json.dumps(shown, default=str) + repr(settings)
    assert "hunter2" not in text and "s3cret" not in text and "k3y" not in text
    assert settings.opensearch_hosts[0] == "http://admin:hunter2@search-1:9200"  # the client still gets it


@pytest.mark.parametrize("hosts", ["not a url", "ftp://search-1:9200", "http://search-1:port", "http://", ","])
def test_a_host_that_is_not_an_opensearch_url_is_refused_naming_the_setting(hosts: str) -> None:
    with pytest.raises(ValidationError) as caught:
        Settings(opensearch_hosts=hosts)
    [error] = caught.value.errors()
    assert error["loc"] == ("opensearch_hosts",)
    assert "https://search-1:9200" in error["msg"]  # the form to write


def test_a_redis_url_of_another_scheme_is_refused_without_its_password() -> None:
    with pytest.raises(ValidationError) as caught:
        Settings(redis_url="http://admin:hunter2@redis:6379")
    assert "hunter2" not in str(caught.value)
    assert "redis://" in caught.value.errors()[0]["msg"]


def test_host_port_without_a_scheme_is_still_accepted() -> None:
    assert Settings(opensearch_hosts="search-1:9200").opensearch_hosts == ["search-1:9200"]


@pytest.mark.parametrize(
    ("line", "kind"), [(b"[1, 2]", "array"), (b'"a string"', "string"), (b"42", "number"), (b"null", "null")]
)
def test_a_catalog_line_that_is_json_but_not_an_object_names_file_and_line(
    tmp_path: Path, line: bytes, kind: str
) -> None:
    path = tmp_path / "c.jsonl"
    path.write_bytes(b'{"id": "1", "title": "a"}\n' + line + b"\n")
    with pytest.raises(ConfigError, match=rf"c\.jsonl:2 holds a JSON {kind}, not an object"):
        list(read_catalog(path, CatalogSchema()))


def test_a_catalog_that_is_not_utf8_names_line_and_byte_offset(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl.gz"
    with gzip.open(path, "wb") as f:
        f.write(b'{"id": "1", "title": "a"}\n{"id": "2", "title": "caf\xe9"}\n')
    with pytest.raises(ConfigError, match=r"c\.jsonl\.gz:2 is not UTF-8 \(byte 0xe9 at offset 51 of the file once uncompressed"):
        list(read_catalog(path, CatalogSchema()))


def test_a_gzipped_catalog_without_gz_and_a_gz_that_is_not_gzip_say_so(tmp_path: Path) -> None:
    plain_named = tmp_path / "c.jsonl"
    plain_named.write_bytes(gzip.compress(b'{"id": "1"}\n'))
    with pytest.raises(ConfigError, match="it is gzipped: name it .gz"):
        list(read_catalog(plain_named, CatalogSchema()))
    gz_named = tmp_path / "d.jsonl.gz"
    gz_named.write_bytes(b'{"id": "1"}\n')
    with pytest.raises(ConfigError, match="named .gz but is not gzipped"):
        list(read_catalog(gz_named, CatalogSchema()))
    with pytest.raises(ConfigError, match="cannot be read"):
        list(read_catalog(tmp_path, CatalogSchema()))


def test_a_byte_order_mark_is_not_part_of_the_first_product(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"id": "1", "title": "a"}\n')
    assert [p.id for p in read_catalog(path, CatalogSchema())] == ["1"]
