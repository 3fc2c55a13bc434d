"""Credential redaction and URI joins (no Ray, no server)."""

import pytest

from bertml.secrets import has_secret, redact
from bertml.shards import join_uri


@pytest.mark.parametrize("uri, shown", [
    ("s3://AKIDEXAMPLE:SECRETEXAMPLE@bucket/in/", "s3://***@bucket/in/"),
    ("gs://bucket/x?access_token=TOKEN1&project=p", "gs://bucket/x?access_token=***&project=p"),
    ("s3://b/x?endpoint_override=h:9000&access_key=AK&secret_key=SK&session_token=ST",
     "s3://b/x?endpoint_override=h:9000&access_key=***&secret_key=***&session_token=***"),
    ("error reading s3://u:p@b/k (denied)", "error reading s3://***@b/k (denied)"),
    ("s3://bucket/plain?scheme=http", "s3://bucket/plain?scheme=http"),
    # AWS secret keys hold unencoded '/', and may hold '@' or '#': all of the user info goes
    ("s3://AKIAUSER:wJal/SLASHSEC@bkt/m?scheme=http", "s3://***@bkt/m?scheme=http"),
    ("s3://AKIA:AT@SIGNSEC@bkt/x", "s3://***@bkt/x"),
    ("Cannot parse URI: 's3://AK:wJ/SEC@bkt/models'", "Cannot parse URI: 's3://***@bkt/models'"),
    ("s3://b/in/?endpoint_override=h:1&secret%5Fkey=PCTSEC", "s3://b/in/?endpoint_override=h:1&secret%5Fkey=***"),
    ("s3://b/in?endpoint_override=user:EPSEC@127.0.0.1:9&scheme=http",
     "s3://b/in?endpoint_override=***@127.0.0.1:9&scheme=http"),
    ("s3://b/x?external_id=EXT&role_arn=arn:aws:iam::1:role/r", "s3://b/x?external_id=***&role_arn=arn:aws:iam::1:role/r"),
    ("s3://b/x?secret_key=ab#cd&scheme=http", "s3://b/x?secret_key=***&scheme=http"),
    ("/local/path", "/local/path"),
])
def test_redact_masks_uri_credentials_only(uri, shown):
    assert redact(uri) == shown
    assert has_secret(uri) == (uri != shown)


def test_redact_walks_configs():
    cfg = {"input": ["s3://k:s@b/a", "/x"], "run": {"output": "s3://b/o?secret_key=S"}, "n": 3}
    assert redact(cfg) == {"input": ["s3://***@b/a", "/x"], "run": {"output": "s3://b/o?secret_key=***"}, "n": 3}


def test_places_compare_without_user_info_or_options(tmp_path):
    from bertml.evaluate import ThresholdsConfig
    from bertml.secrets import overlap

    assert overlap("s3://AKIAX:SECRETX@bkt/models/m?endpoint_override=h:1", "s3://bkt/models/m/")
    assert overlap("s3://bkt/models/m/new", "s3://bkt/models/m?scheme=http")
    assert not overlap("s3://bkt/models/m2", "s3://bkt/models/m")
    for output in ("s3://AKIAX:SECRETX@bkt/models/m?scheme=http", "s3://bkt/models/m/copy"):
        with pytest.raises(Exception, match="outside the checkpoint"):
            ThresholdsConfig(checkpoint="s3://bkt/models/m?scheme=http", data="d", output=output)


def test_join_uri_keeps_options_at_the_end():
    assert join_uri("s3://b/r?endpoint_override=h:1&scheme=http", "scored") == "s3://b/r/scored?endpoint_override=h:1&scheme=http"
    assert join_uri("s3://b/r/", "a", "b.json") == "s3://b/r/a/b.json"
    assert join_uri("/tmp/r", "scored") == "/tmp/r/scored"
