"""The shared fixtures give a real Kafka broker and a real S3 endpoint, and fail loudly."""

from __future__ import annotations

import asyncio
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import S3_ACCESS_KEY, S3_REGION, S3_SECRET_KEY, script

ROOT = Path(__file__).resolve().parents[2]


async def _create_topic(bootstrap: str, name: str, partitions: int = 1) -> None:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, partitions, 1)])
    finally:
        await admin.close()


async def test_broker_lists_itself_over_the_wire(kafka_bootstrap):
    host, _, port = kafka_bootstrap.rpartition(":")
    assert script("localkafka").probe(host, int(port)) == [(1, host, int(port))]


async def test_produce_and_consume_a_record(kafka_bootstrap, unique_name):
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

    topic, group = unique_name("t"), unique_name("g")
    await _create_topic(kafka_bootstrap, topic)
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=kafka_bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await producer.start()
    await consumer.start()
    try:
        async with asyncio.timeout(60):
            meta = await producer.send_and_wait(
                topic, b"value", key=b"job-1", headers=[("ce_type", b"test")]
            )
            record = await consumer.getone()
            await consumer.commit()
            committed = await consumer.committed(TopicPartition(topic, 0))
    finally:
        await consumer.stop()
        await producer.stop()
    assert meta.offset == 0
    assert (record.key, record.value, list(record.headers)) == (
        b"job-1",
        b"value",
        [("ce_type", b"test")],
    )
    assert committed == 1


async def test_idempotent_producer_is_granted_a_producer_id(kafka_bootstrap, unique_name):
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

    topic = unique_name("t")
    await _create_topic(kafka_bootstrap, topic)
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, enable_idempotence=True)
    await producer.start()
    try:
        async with asyncio.timeout(60):
            for i in range(3):
                await producer.send_and_wait(topic, f"v{i}".encode(), key=b"k")
        # aiokafka keeps what the broker granted (InitProducerId) only here.
        txn = producer._txn_manager
        producer_id, sequence = txn.producer_id, txn.sequence_number(TopicPartition(topic, 0))
    finally:
        await producer.stop()
    assert producer_id >= 0
    assert sequence == 3  # three batches accepted with sequence numbers 0, 1, 2

    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=kafka_bootstrap, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        async with asyncio.timeout(60):
            batches = await consumer.getmany(timeout_ms=10_000, max_records=10)
    finally:
        await consumer.stop()
    values = [r.value for records in batches.values() for r in records]
    assert values == [b"v0", b"v1", b"v2"]


def test_s3_put_get_and_multipart(s3_endpoint, unique_name):
    import boto3
    from botocore.config import Config

    s3 = boto3.client(
        "s3",
        endpoint_url=s3_endpoint,
        region_name=S3_REGION,
        aws_access_key_id=S3_ACCESS_KEY,
        aws_secret_access_key=S3_SECRET_KEY,
        config=Config(s3={"addressing_style": "path"}),
    )
    bucket = unique_name("b")
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="a/b.txt", Body=b"hello")
    assert s3.get_object(Bucket=bucket, Key="a/b.txt")["Body"].read() == b"hello"

    data = os.urandom(12 * 1024 * 1024)
    part_size = 5 * 1024 * 1024
    upload = s3.create_multipart_upload(Bucket=bucket, Key="big.bin")
    parts = []
    for number, start in enumerate(range(0, len(data), part_size), 1):
        resp = s3.upload_part(
            Bucket=bucket,
            Key="big.bin",
            UploadId=upload["UploadId"],
            PartNumber=number,
            Body=data[start : start + part_size],
        )
        parts.append({"PartNumber": number, "ETag": resp["ETag"]})
    s3.complete_multipart_upload(
        Bucket=bucket, Key="big.bin", UploadId=upload["UploadId"], MultipartUpload={"Parts": parts}
    )
    assert len(parts) == 3
    head = s3.head_object(Bucket=bucket, Key="big.bin")
    assert head["ContentLength"] == len(data)
    assert head["ETag"].strip('"').endswith("-3")  # S3's multipart ETag: <md5 of md5s>-<parts>
    got = s3.get_object(Bucket=bucket, Key="big.bin")["Body"].read()
    assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()


def test_s3_storage_is_a_fresh_bucket(s3_storage, tmp_path):
    assert s3_storage.list("") == []
    s3_storage.put("ns/x/1.bin", b"one")
    src = tmp_path / "src.bin"
    src.write_bytes(b"two" * 1000)
    s3_storage.upload_file("ns/x/2.bin", src)
    assert s3_storage.list("ns/") == ["ns/x/1.bin", "ns/x/2.bin"]
    assert s3_storage.get("ns/x/1.bin") == b"one"
    assert s3_storage.uri("ns/x/1.bin") == f"s3://{s3_storage.bucket}/ns/x/1.bin"


def test_local_storage_is_under_tmp_path(local_storage, tmp_path):
    local_storage.put("ns/a.txt", b"a")
    assert (tmp_path / "storage" / "ns" / "a.txt").read_bytes() == b"a"
    assert local_storage.list("") == ["ns/a.txt"]


def test_unique_names_are_fresh_and_valid(unique_name):
    names = {unique_name("t") for _ in range(100)}
    assert len(names) == 100
    assert all(len(n) == 10 and n.startswith("t-") and n == n.lower() for n in names)
    with pytest.raises(ValueError, match="name prefix"):
        unique_name("Bad_Prefix")


def test_probe_of_a_closed_port_says_no():
    localkafka = script("localkafka")
    port = localkafka.free_port()
    assert localkafka.answers(f"127.0.0.1:{port}", timeout=1.0) is False
    assert script("locals3").answers(f"http://127.0.0.1:{port}", timeout=1.0) is False


def test_a_server_that_is_not_there_errors_the_test(tmp_path):
    """A fixture that cannot get its server makes the test ERROR, never skip."""
    port = script("localkafka").free_port()
    (tmp_path / "conftest.py").write_text(
        "from tests.conftest import kafka_bootstrap, s3_endpoint  # noqa: F401\n"
    )
    (tmp_path / "test_needs_servers.py").write_text(
        "def test_kafka(kafka_bootstrap):\n    pass\n\ndef test_s3(s3_endpoint):\n    pass\n"
    )
    env = {
        **os.environ,
        "PREANNOTATE_TEST_KAFKA_BOOTSTRAP": f"127.0.0.1:{port}",
        "PREANNOTATE_TEST_S3_ENDPOINT": f"http://127.0.0.1:{port}",
    }
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
        cwd=ROOT,  # `python -m` puts it on sys.path, so `tests.conftest` imports
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert "2 errors" in out and "skipped" not in out, out
    assert "PREANNOTATE_TEST_KAFKA_BOOTSTRAP" in out and "does not answer" in out, out
    assert "PREANNOTATE_TEST_S3_ENDPOINT" in out, out
