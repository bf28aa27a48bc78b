"""Every input the fuzzers (fuzz/, docs/reliability.md) found breaking an invariant, as the error it now
gets: a client error (4xx) where an exception used to escape as a 500, or the value both readings agree on.
Each test names the target that found it; the inputs are the crashes libFuzzer wrote, minimized by hand."""

from __future__ import annotations

import base64
import datetime as dt
import io
import struct
import tarfile
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from botocore.eventstream import EventStreamBuffer
from scipy.sparse import csr_matrix, save_npz
from starlette.testclient import TestClient

from mainsail.archives import safe_extract
from mainsail.aws import eventstream
from mainsail.aws.auth import sigv4
from mainsail.aws.auth.credentials import AccessKey, KeyRing
from mainsail.aws.errors import SerializationException
from mainsail.aws.logs.api import LogsApi
from mainsail.aws.logs.errors import InvalidParameterException
from mainsail.aws.protocol import json_body
from mainsail.aws.s3.api import S3Api
from mainsail.aws.s3.files import S3Error
from mainsail.aws.s3.store import S3Store
from mainsail.aws.s3.wire import AwsChunkedDecoder, completed_parts, delete_request
from mainsail.aws.sts import handle
from mainsail.codecs import CsvCodec, JsonCodec, JsonLinesCodec, MediaType, NpyCodec, ParquetCodec, huggingface, toolkit
from mainsail.codecs.base import decode_text
from mainsail.codecs.csv import decode_record
from mainsail.codecs.xgboost_inputs import libsvm_matrix
from mainsail.errors import BadRequest, InvalidModelArchive
from mainsail.gateway.auth import Service, SignedRequests
from mainsail.handlers.tabular import plain_csv_line

DEEP = b"[" * 1100 + b"]" * 1100  # past orjson's 1024 levels, so the stdlib parser runs and recurses
JSON, JSONL, CSV = MediaType("application/json"), MediaType("application/jsonlines"), MediaType("text/csv")


def npy(header: str, data: bytes = b"") -> bytes:
    raw = header.encode("latin-1")
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(raw)) + raw + data


# -- codecs ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("decode", [
    lambda body: JsonCodec().decode(body, JSON),  # json: RecursionError
    lambda body: JsonLinesCodec().decode(body, JSONL),  # jsonlines
    lambda body: toolkit.decode(body.decode(), "application/json"),  # toolkit
    lambda body: huggingface.decode(body, "application/json"),  # huggingface
])
def test_json_nested_past_the_stack_is_a_bad_request(decode: object) -> None:
    with pytest.raises(BadRequest, match="deep|recursion"):
        decode(DEEP)  # type: ignore[operator]


def test_huggingface_json_with_too_long_an_integer_is_a_bad_request() -> None:  # review, beside the above
    with pytest.raises(BadRequest, match="not valid"):
        huggingface.decode(b"1" * 5000, "application/json")


@pytest.mark.parametrize("body", [b'"\\ud800""\\ud800"', b'["\\udfff", "a"]', b'{"a": "\\ud834"}'])
def test_json_strings_with_a_lone_surrogate_are_a_bad_request(body: bytes) -> None:  # json: UnicodeEncodeError
    with pytest.raises(BadRequest, match="lone surrogate"):
        JsonCodec().decode(body, JSON)


def test_a_charset_name_holding_nul_is_unknown() -> None:  # media_types: ValueError from codecs.lookup
    with pytest.raises(BadRequest, match="unknown charset"):
        decode_text(b"1,2", MediaType("text/csv", {"charset": "utf\x008"}))


def test_a_bom_leaves_the_tabular_fast_path_to_the_codec_which_drops_it() -> None:  # csv
    assert plain_csv_line("\ufeff1,2.5".encode(), "text/csv") is None
    body = b"\r\r\xef\xbb\xbf;\n"  # a BOM not at the start is a character of the field, in both readings
    assert decode_record(plain_csv_line(body, "text/csv") or "") == CsvCodec().decode(body, CSV).iloc[0].tolist()


@pytest.mark.parametrize("text", ["\x0c", " \t", "\x1c"])
def test_decode_record_of_a_blank_line_is_an_empty_body_as_in_the_codec(text: str) -> None:  # csv
    with pytest.raises(BadRequest, match="empty body"):
        decode_record(text)


@pytest.mark.parametrize(("header", "why"), [
    ("{'descr': '<f8', 'fortran_order': False, 'shape': (1,\n", "EOF in multi-line"),  # huggingface: TokenError
    ("{'descr': '<f8', 'fortran_order': False, 'shape': (0,- 3), }\n", "negative|cannot reshape"),  # npy: ValueError
    ("{'descr': '>2i', 'fortran_order': True, 'shape': (1, 2), }\n", "subarray|EOF"),  # npy: a subarray dtype
])
def test_broken_npy_headers_are_bad_requests(header: str, why: str) -> None:
    for decode in (toolkit.decode_npy, lambda b: NpyCodec().decode(b, MediaType("application/x-npy"))):
        with pytest.raises(BadRequest, match=why):
            decode(npy(header))


def _npz_with_a_broken_deflate_stream() -> bytes:
    out = io.BytesIO()
    save_npz(out, csr_matrix(np.eye(3)), compressed=True)
    body = bytearray(out.getvalue())
    name, extra = int.from_bytes(body[26:28], "little"), int.from_bytes(body[28:30], "little")
    for at in range(30 + name + extra, 38 + name + extra):
        body[at] ^= 0xFF
    return bytes(body)


@pytest.mark.parametrize("body", [b"", b"\xc3\xff", b"PK\x03\x04" + b"\0" * 30, _npz_with_a_broken_deflate_stream(),
                                  npy("{'descr': '<f8', 'fortran_order': False, 'shape': (1,\n")])
def test_broken_npz_bodies_are_bad_requests(body: bytes) -> None:  # toolkit: EOFError, BadZipFile, TokenError
    with pytest.raises(BadRequest, match="NPZ"):
        toolkit.decode(body, "application/x-npz")


def test_toolkit_csv_bytes_that_are_not_utf8_are_a_bad_request() -> None:  # toolkit: UnicodeDecodeError
    with pytest.raises(BadRequest, match="not UTF-8"):
        toolkit.decode(b"1,\xb2", "text/csv")


def test_toolkit_csv_genfromtxt_cannot_type_is_a_bad_request() -> None:  # toolkit: TypeError in genfromtxt
    with pytest.raises(BadRequest, match="CSV body"):
        toolkit.decode("1,2,3\n1,\x011,", "text/csv")


@pytest.mark.parametrize("text", ["0,\x1f30", "0,0006530762719810930460", "\u0669"])
def test_toolkit_csv_fast_path_reads_what_genfromtxt_reads(text: str) -> None:  # toolkit: ValueError, floats
    got, slow = toolkit.decode_csv(text), toolkit.genfromtxt(text)
    assert got.dtype == slow.dtype and np.array_equal(got, slow, equal_nan=got.dtype.kind == "f")


def test_huggingface_csv_the_csv_module_refuses_is_a_bad_request() -> None:  # huggingface: csv.Error
    with pytest.raises(BadRequest, match="cannot be read"):
        huggingface.decode(b"q\tinputs\x00\x00\x00\re", "text/csv")


def test_parquet_with_pandas_metadata_that_cannot_apply_is_a_bad_request() -> None:  # parquet: KeyError
    table = pa.table({"a": [1, 2]}).replace_schema_metadata({b"pandas": b'{"columns": [{"name": "a", "field_name": '
                                                             b'"a", "pandas_type": "int64", "metadata": null}], '
                                                             b'"index_columns": [], "column_indexes": []}'})
    out = io.BytesIO()
    pq.write_table(table, out)
    with pytest.raises(BadRequest, match="pandas metadata"):
        ParquetCodec().decode(out.getvalue(), MediaType("application/x-parquet"))


def test_libsvm_feature_index_beyond_32_bits_is_a_bad_request() -> None:  # xgboost_inputs: OverflowError
    with pytest.raises(BadRequest, match="feature index"):
        libsvm_matrix("1 99999999999999999999:1\n")
    assert libsvm_matrix("1 4294967294:1\n").shape == (1, 2**32 - 1)


# -- AWS protocols ---------------------------------------------------------------------------------


def test_sts_error_repeating_a_control_character_is_well_formed_xml() -> None:  # sts_query
    response = handle(b"Action=Get%00Caller%01Identity&Version=%ff", "rid")
    message = ET.fromstring(bytes(response.body)).findtext(".//{*}Message")
    assert response.status_code == 400 and message == "Could not find operation Get\ufffdCaller\ufffdIdentity for " \
        "version \ufffd"


KEY = AccessKey("AKIAFUZZ", "fuzz/secret+key=", "fuzz")
SIGNED_HEADERS = {"x-amz-date": "20260101T000000Z", "authorization": "AWS4-HMAC-SHA256 Credential=AKIAFUZZ/20260101/"
                  "us-east-1/s3/aws4_request, SignedHeaders=host;x-amz-date, Signature="}


@pytest.mark.parametrize(("signature", "host"), [("é" * 64, "h"), ("0" * 64, "["), ("0" * 64, "h]:1")])
def test_a_non_ascii_signature_or_a_host_urlsplit_refuses_is_a_mismatch(signature: str, host: str) -> None:  # sigv4
    headers = {**SIGNED_HEADERS, "authorization": SIGNED_HEADERS["authorization"] + signature}
    signed = sigv4.parse(headers, "")
    with pytest.raises(sigv4.AuthFailure) as failure:
        sigv4.verify(signed, KeyRing({KEY.access_key_id: KEY}), method="GET", raw_path="/b/k", query_string="",
                     headers=[("host", host), ("x-amz-date", "20260101T000000Z")], payload_hash=sigv4.UNSIGNED_PAYLOAD,
                     now=dt.datetime(2026, 1, 1, tzinfo=dt.UTC))
    assert failure.value.kind == "signature"


@pytest.mark.parametrize("date", ["Thu, 02 Jan 1011 00:04221482600", "Fri, 31 Dec 9999 23:59:59 -0100",
                                  "Mon, 01 Jan 0999 00:00:00 GMT"])
def test_a_date_header_out_of_range_is_an_incomplete_signature(date: str) -> None:  # sigv4: OverflowError
    headers = {"date": date, "authorization": SIGNED_HEADERS["authorization"] + "0" * 64}
    with pytest.raises(sigv4.AuthFailure) as failure:
        sigv4.parse(headers, "")
    assert failure.value.kind == "incomplete"


def test_a_non_ascii_chunk_signature_is_a_mismatch() -> None:  # sigv4 (ChunkSignatures)
    signed = sigv4.parse({**SIGNED_HEADERS, "authorization": SIGNED_HEADERS["authorization"] + "0" * 64}, "")
    chain = sigv4.ChunkSignatures(sigv4.Verified(KEY, signed))
    with pytest.raises(sigv4.AuthFailure):
        chain.chunk("ü" * 64, sigv4.EMPTY_SHA256)


def test_json11_bodies_nested_past_the_stack_in_the_gateway_and_logs_tokens(tmp_path: Path) -> None:  # json11
    for service in (Service("json", "sagemaker", "CreateEndpoint"), Service("json", "logs", "GetLogEvents")):
        assert SignedRequests._requests(service, "/", DEEP, "us-east-1")  # the operation answers the body
    (tmp_path / "logs" / "ep").mkdir(parents=True)
    token = base64.urlsafe_b64encode(DEEP).decode()
    with pytest.raises(InvalidParameterException, match="nextToken"):
        LogsApi(tmp_path).call("Logs_20140328.DescribeLogGroups", b'{"nextToken": "%s"}' % token.encode(),
                               "us-east-1")


def test_json_body_nested_past_the_stack_is_a_serialization_exception() -> None:  # json11 (by review)
    # reported while aws/protocol.py was another engineer's; fixed there meanwhile (93d0ef1)
    with pytest.raises(SerializationException):
        json_body(b'{"a": ' * 1100 + b"1" + b"}" * 1100)


@pytest.mark.parametrize(("when", "ms"), [
    (dt.datetime(3075, 1, 5, 17, 18, 24, 269000, tzinfo=dt.UTC), 34870843104269),
    (dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(milliseconds=-34540010842087), -34540010842087),
    (dt.datetime(1969, 12, 31, 23, 59, 59, 999500, tzinfo=dt.UTC), -1),  # floored, as Java's toEpochMilli
])
def test_event_stream_timestamps_are_exact_milliseconds(when: dt.datetime, ms: int) -> None:  # eventstream
    buffer = EventStreamBuffer()
    buffer.add_data(eventstream.encode_message([("t", when)]))
    assert next(iter(buffer)).headers == {"t": ms}


def test_event_stream_refuses_what_botocore_cannot_decode() -> None:  # eventstream: DuplicateHeader, struct.error
    with pytest.raises(ValueError, match="repeat"):
        eventstream.encode_message([("n", 1), ("n", 2)])
    with pytest.raises(ValueError, match="65535"):
        eventstream.encode_message([("s", "é" * 40000)])
    with pytest.raises(ValueError, match="65535"):
        eventstream.encode_message([("b", b"\0" * 65536)])


# -- model archives ----------------------------------------------------------------------------------


@pytest.mark.parametrize("target", ["a", "missing", "../x"])
def test_a_hard_link_to_a_member_the_archive_lacks_is_refused(tmp_path: Path, target: str) -> None:
    # found by the hypothesis property in tests/serve/test_model_dir.py: tarfile's KeyError escaped
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        info = tarfile.TarInfo("a")
        info.type, info.linkname = tarfile.LNKTYPE, target
        tar.addfile(info)
    (tmp_path / "model.tar.gz").write_bytes(out.getvalue())
    with pytest.raises(InvalidModelArchive):
        safe_extract(tmp_path / "model.tar.gz", tmp_path / "out")


# -- S3 --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("body", [b'<?xml version="1.0" encoding="UTF-9"?><Delete/>',
                                  b'<?xml version="1.0" encoding="shift_jis"?><Delete/>'])
def test_xml_declaring_an_encoding_expat_cannot_use_is_malformed(body: bytes) -> None:  # s3_xml: LookupError
    for parse in (delete_request, completed_parts):
        with pytest.raises(S3Error) as exc:
            parse(body)
        assert exc.value.code == "MalformedXML"


@pytest.mark.parametrize("body", [b"-0\r\n\r\n", b"-5\r\nhello\r\n0\r\n\r\n", b"0x5\r\nhello\r\n0\r\n\r\n",
                                  b"5_0\r\n" + b"x" * 80 + b"\r\n0\r\n\r\n"])
def test_aws_chunked_sizes_are_hex_digits_only(body: bytes) -> None:  # aws_chunked: int(x, 16) read "-5"
    decoder = AwsChunkedDecoder()
    with pytest.raises(S3Error, match="bad chunk size"):
        decoder.feed(body)


def test_s3_keys_whose_escapes_are_not_utf8_are_invalid_uris_and_errors_stay_xml(tmp_path: Path) -> None:  # s3_rest
    store = S3Store(tmp_path / "s3")
    store.create_bucket("bucket")
    client = TestClient(S3Api(store))
    response = client.put("/bucket/w%84key", content=b"hello world")
    assert (response.status_code, ET.fromstring(response.content).findtext("Code")) == (400, "InvalidURI")
    response = client.request("GET", "/bucket/k%01x")  # an error repeating a control character still parses
    assert (response.status_code, ET.fromstring(response.content).findtext("Resource")) == (404, "/bucket/k\ufffdx")
