"""Every access of stream_app/faust_internals.py against the installed faust-streaming,
mode and aiokafka: an upgrade that moves one fails here with a message naming it."""

from __future__ import annotations

import asyncio
import inspect
import re
from importlib.metadata import version

import faust
import pytest
from faust.types import TP

from stream_app import faust_internals as fi
from stream_app.config import repo_root


def moved(what: str, detail: str = "") -> str:
    return (
        f"faust_internals.{what}: what it relies on moved in this faust-streaming/aiokafka "
        f"(faust-streaming {version('faust-streaming')}, aiokafka {version('aiokafka')}); "
        f"{detail} — adapt stream_app/faust_internals.py and the pins in pyproject.toml"
    )


@pytest.fixture(scope="module")
def app():
    app = faust.App("internals-test", broker="kafka://127.0.0.1:1", store="memory://")
    app.Table("internals-table", default=None, partitions=2)
    return app


def test_pins_match_the_installed_versions():
    """pyproject.toml pins faust-streaming and aiokafka to what these tests ran with."""
    tomllib = pytest.importorskip("tomllib")
    root = repo_root()
    if root is None:
        pytest.skip("not running from a checkout")
    deps = tomllib.loads((root / "pyproject.toml").read_text())["project"]["dependencies"]
    pins = {}
    for dep in deps:
        match = re.match(r"^([A-Za-z0-9_.-]+)(\[[^\]]*\])?==([^;,\s]+)", dep)
        if match:
            pins[match.group(1).lower()] = match.group(3)
    for name in ("faust-streaming", "aiokafka"):
        assert name in pins, f"{name} must be pinned with == in pyproject.toml"
        assert version(name) == pins[name], (
            f"{name} {version(name)} installed, {pins[name]} pinned: run the tests of "
            "stream_app/faust_internals.py and the fault tests before moving the pin"
        )


def test_assignor(app):
    assert fi.assigned_standbys(app) == set(), moved("assigned_standbys")
    assert fi.assigned_actives(app) == set(), moved("assigned_actives")


def test_recovery(app):
    assert hasattr(fi.recovery_service(app), "in_recovery"), moved("recovery_service")
    assert fi.recovery_in_progress(app) is False, moved("recovery_in_progress")
    assert fi.recovery_remaining(app) == {}, moved("recovery_remaining")
    assert fi.recovery_remaining_seconds(app, 100) is None, moved(
        "recovery_remaining_seconds", "Recovery._estimated_active_remaining_secs"
    )
    assert fi.actives_ready(app) is False, moved("actives_ready", "TableManager.actives_ready")


def test_memory_store_key_partitions(app):
    store = app.tables["internals-table"].data
    index = fi.key_partitions(store)
    assert isinstance(index, dict), moved("key_partitions", "memory.Store._key_partition")

    class Event:
        def __init__(self, key, partition):
            self.key, self.value = key, 1
            self.message = type("M", (), {"partition": partition, "value": b"1"})()

    store.apply_changelog_batch([Event("k", 1)], lambda k: k, lambda v: v)
    assert index.get("k") == 1, moved("key_partitions", "recovery no longer fills it")


def test_producer(app):
    from faust.transport.drivers.aiokafka import Producer

    assert isinstance(app.producer, Producer)
    assert "_producer" in inspect.getsource(Producer), moved("aiokafka_producer")
    assert fi.aiokafka_producer(app) is None, moved("aiokafka_producer", "set before start")
    import aiokafka

    assert hasattr(aiokafka.AIOKafkaClient, "fetch_all_metadata"), moved(
        "aiokafka_producer", "AIOKafkaClient.fetch_all_metadata"
    )

    async def client() -> bool:
        producer = aiokafka.AIOKafkaProducer(bootstrap_servers="127.0.0.1:1")
        try:
            return hasattr(producer, "client")
        finally:
            await producer.stop()

    assert asyncio.run(client()), moved("aiokafka_producer", "AIOKafkaProducer.client")


def test_consumer_bookkeeping(app):
    consumer = app.consumer
    tp = TP("t", 0)
    assert fi.pending_acks(consumer, tp) is None, moved("pending_acks", "Consumer._acked")
    consumer._acked[tp].extend([3, 4])
    consumer._acked_index[tp].update({3, 4})
    assert fi.pending_acks(consumer, tp) == [3, 4], moved("pending_acks")
    fi.clear_acked(consumer, tp)
    assert not consumer._acked_index[tp], moved("clear_acked", "Consumer._acked_index")
    assert fi.pending_gaps(consumer, tp) is None, moved("pending_gaps", "Consumer._gap")
    assert fi.committed_offset(consumer, tp) is None, moved("committed_offset")
    fi.set_committed(consumer, {tp: 5})
    assert fi.committed_offset(consumer, tp) == 5, moved("set_committed")
    fi.mark_committed(consumer, [tp], 1.0)
    assert consumer._thread.tp_last_committed_at[tp] == 1.0, moved(
        "mark_committed", "AIOKafkaConsumerThread.tp_last_committed_at"
    )
    assert inspect.iscoroutinefunction(type(consumer)._add_gap), moved(
        "add_gap", "Consumer._add_gap"
    )
    assert list(inspect.signature(type(consumer)._add_gap).parameters) == [
        "self",
        "tp",
        "offset_from",
        "offset_to",
    ], moved("add_gap", "Consumer._add_gap's arguments")
    assert inspect.iscoroutinefunction(type(consumer)._commit_tps), moved(
        "replace_commit", "Consumer._commit_tps"
    )
    params = list(inspect.signature(type(consumer)._commit_tps).parameters)
    assert params[:2] == ["self", "tps"], moved("replace_commit", "_commit_tps's arguments")


def test_group_coordinator_and_isolation_level():
    import aiokafka
    from aiokafka.consumer.group_coordinator import GroupCoordinator

    assert "self._coordinator" in inspect.getsource(aiokafka.AIOKafkaConsumer.start), moved(
        "group_coordinator", "AIOKafkaConsumer._coordinator"
    )
    assert "self._group_instance_id" in inspect.getsource(GroupCoordinator.__init__), moved(
        "group_instance_id", "GroupCoordinator._group_instance_id"
    )
    assert "_isolation_level" in inspect.getsource(aiokafka.AIOKafkaConsumer.start), moved(
        "set_isolation_level", "start() no longer reads AIOKafkaConsumer._isolation_level"
    )

    async def level() -> str:
        consumer = aiokafka.AIOKafkaConsumer(bootstrap_servers="127.0.0.1:1")
        fi.set_isolation_level(consumer, "read_committed")
        return consumer._isolation_level

    assert asyncio.run(level()) == "read_committed", moved("set_isolation_level")
    assert "self._fetch_max_wait_ms" in inspect.getsource(aiokafka.AIOKafkaConsumer.start), moved(
        "set_fetch_max_wait", "start() no longer reads AIOKafkaConsumer._fetch_max_wait_ms"
    )

    async def fetch_wait() -> int:
        consumer = aiokafka.AIOKafkaConsumer(bootstrap_servers="127.0.0.1:1")
        fi.set_fetch_max_wait(consumer, 100)
        return consumer._fetch_max_wait_ms

    assert asyncio.run(fetch_wait()) == 100, moved("set_fetch_max_wait")


def test_consumer_thread_methods():
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    create = AIOKafkaConsumerThread._create_worker_consumer
    assert list(inspect.signature(create).parameters) == ["self", "transport"], moved(
        "patch_consumer_thread", "AIOKafkaConsumerThread._create_worker_consumer"
    )
    assert "fetch_max_wait_ms=" in inspect.getsource(create), moved(
        "patch_create_worker_consumer", "Faust no longer sets fetch_max_wait_ms itself"
    )
    highwaters = AIOKafkaConsumerThread._highwaters
    assert inspect.iscoroutinefunction(highwaters), moved(
        "patch_consumer_thread", "AIOKafkaConsumerThread._highwaters"
    )


def test_fetch_records_and_seek_to_committed():
    """What offset_guard.fetch_active_partitions_only and seek_uncommitted_to_start wrap."""
    from aiokafka.consumer.fetcher import Fetcher
    from faust.transport import consumer as faust_consumer
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    fetch = AIOKafkaConsumerThread._fetch_records
    assert inspect.iscoroutinefunction(fetch), moved(
        "patch_fetch_records", "AIOKafkaConsumerThread._fetch_records"
    )
    assert list(inspect.signature(fetch).parameters)[:3] == [
        "self",
        "consumer",
        "active_partitions",
    ], moved("patch_fetch_records", "_fetch_records's arguments")
    assert "self._active_partitions" in inspect.getsource(
        faust_consumer.Consumer._get_active_partitions
    ), moved("patch_fetch_records", "Faust no longer fetches with its own active set")
    # the reason for the wrapper: aiokafka reads no partitions as every partition
    assert "if partitions and tp not in partitions" in inspect.getsource(Fetcher.fetched_records), (
        moved("patch_fetch_records", "Fetcher.fetched_records' partitions argument")
    )
    seek = faust_consumer.ThreadDelegateConsumer.seek_to_committed
    assert inspect.iscoroutinefunction(seek), moved(
        "patch_seek_to_committed", "ThreadDelegateConsumer.seek_to_committed"
    )
    assert "self.seek_to_committed()" in inspect.getsource(faust_consumer.Consumer.perform_seek), (
        moved("patch_seek_to_committed", "perform_seek no longer calls seek_to_committed")
    )
    for name in ("earliest_offsets", "seek_wait"):
        assert inspect.iscoroutinefunction(
            getattr(faust_consumer.ThreadDelegateConsumer, name, None)
        ), moved("patch_seek_to_committed", f"ThreadDelegateConsumer.{name}")


def test_table_manager_start():
    from faust.tables.manager import TableManager

    source = inspect.getsource(TableManager.on_start)
    for part in ("await self.sleep(1.0)", "await self._update_channels()", "recovery.start()"):
        assert part in source, moved("start_tables_at_once", f"TableManager.on_start: {part}")
    assert "self._tables_registered.set()" in inspect.getsource(TableManager._update_channels), (
        moved("start_tables_at_once", "_update_channels no longer registers the tables")
    )


def test_web_overrides():
    from aiohttp.web_runner import AppRunner
    from faust.web.drivers.aiohttp import Web

    assert inspect.iscoroutinefunction(getattr(AppRunner, fi.WEB_MAKE_SERVER, None)), moved(
        "WEB_MAKE_SERVER", "aiohttp AppRunner._make_server"
    )
    assert "self._runner" in inspect.getsource(Web.__init__), moved("WEB_OVERRIDES", "_runner")
    assert hasattr(Web, "_new_transport_tcp"), moved("WEB_OVERRIDES", "_new_transport_tcp")


def test_store_interface_faust_calls():
    """What the local store implements is what Faust's tables and recovery call."""
    from faust.tables import base, recovery

    assert "self.data.on_rebalance(" in inspect.getsource(base.Collection.on_rebalance), moved(
        "local store", "Collection.on_rebalance no longer calls the store's"
    )
    assert "table.persisted_offset(tp)" in inspect.getsource(recovery.Recovery._add), moved(
        "local store", "Recovery no longer asks the store where to start reading"
    )
    assert "self.data.apply_changelog_batch(" in inspect.getsource(
        base.Collection.apply_changelog_batch
    ), moved("local store", "changelog records no longer reach the store")


def test_table_converters(app):
    to_key, to_value = fi.table_converters(app.tables["internals-table"])
    assert to_key(["k", [1.0, 2.0]]) == ("k", (1.0, 2.0)), moved(
        "table_converters", "Collection._to_key no longer makes windowed keys tuples"
    )
    assert to_value({"a": 1}) == {"a": 1}, moved("table_converters", "Collection._to_value")
