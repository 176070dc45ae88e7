"""Reading rosbag2 bags: rosbag2's own test bags, bags written here, and damaged ones."""
from __future__ import annotations

import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from rosbags.rosbag2 import CompressionFormat, CompressionMode, StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore

from robot_imitation.data.bags import BagError, TopicInfo, open_bag

SHARED_BAGS = Path(__file__).resolve().parents[2] / "shared" / "data" / "rosbag2"
TYPES = get_typestore(Stores.ROS2_KILTED)
STRING = "std_msgs/msg/String"
LOG = "rcl_interfaces/msg/Log"
PARAMETER_EVENT = "rcl_interfaces/msg/ParameterEvent"
TALKER_TOPICS = {"/parameter_events": TopicInfo(PARAMETER_EVENT, 0), "/rosout": TopicInfo(LOG, 10),
                 "/topic": TopicInfo(STRING, 10)}
SPLIT_TOPICS = {"AAA": TopicInfo(STRING, 804), "BBB": TopicInfo(STRING, 742),
                "CCC": TopicInfo(STRING, 742), "DDD": TopicInfo(STRING, 753),
                "EEE": TopicInfo(STRING, 804), "FFF": TopicInfo(STRING, 772),
                "GGG": TopicInfo(STRING, 731), "HHH": TopicInfo(STRING, 726)}


# ===================================================================== rosbag2's own bags
def shared_bag(name: str) -> Path:
    path = SHARED_BAGS / name
    if not path.is_dir():
        pytest.skip(f"rosbag2's test bags are not available ({SHARED_BAGS} is absent)")
    return path


def read_all(path: Path) -> list:
    with open_bag(path) as bag:
        return list(bag.messages())


def assert_log_time_order(messages: list) -> None:
    times = [t for _, t, _ in messages]
    assert times == sorted(times)


@pytest.mark.parametrize("name", ["mcap_talker", "sqlite3_talker"])
def test_talker_bags_load(name):
    """metadata.yaml version 4; the files' QoS profiles differ from metadata.yaml's, and the
    sqlite3 file stores a wrong definition of rcl_interfaces/msg/Log: the Kilted type reads it."""
    path = shared_bag(name)
    with open_bag(path) as bag:
        assert bag.topics == TALKER_TOPICS
        assert bag.storage == name.split("_")[0] and bag.custom_data == {}
        assert bag.duration == pytest.approx(4.531096768)
    messages = read_all(path)
    assert_log_time_order(messages)
    said = [m.data for topic, _, m in messages if topic == "/topic"]
    assert said == [f"Hello, world! {i}" for i in range(10)]
    logs = [m for topic, _, m in messages if topic == "/rosout"]
    assert logs[0].name == "minimal_publisher" and logs[0].msg == "Publishing: 'Hello, world! 0'"


@pytest.mark.parametrize("name", ["mcap_wbag", "sqlite3_wbag"])
def test_split_bags_load(name):
    """A bag split by size into five storage files, read as one in log-time order."""
    path = shared_bag(name)
    with open_bag(path) as bag:
        assert len(bag.files) == 5 and bag.topics == SPLIT_TOPICS
        assert bag.message_count == 6074
    messages = read_all(path)
    assert len(messages) == 6074
    assert_log_time_order(messages)
    assert all(isinstance(m.data, str) for _, _, m in messages)


def test_mcap_cdr_test_bag_loads_with_its_stored_definitions():
    """test_msgs types are no Kilted types: the definitions stored in the MCAP decode them."""
    path = shared_bag("mcap_cdr_test")
    with open_bag(path) as bag:
        assert bag.topics == {"/array_topic": TopicInfo("test_msgs/msg/Arrays", 4),
                              "/test_topic": TopicInfo("test_msgs/msg/BasicTypes", 3)}
    messages = read_all(path)
    assert len(messages) == 7
    basic = next(m for topic, _, m in messages if topic == "/test_topic")
    assert basic.__msgtype__ == "test_msgs/msg/BasicTypes" and hasattr(basic, "float64_value")


def independent_counts(path: Path) -> dict:
    """{topic: messages} of a bag's storage file, read without rosbags: the ``mcap`` library
    (no decoding) or plain SQL."""
    import sqlite3

    from mcap.reader import make_reader

    counts = {}
    for f in sorted(path.glob("*.mcap")):
        with open(f, "rb") as stream:
            for _, channel, _ in make_reader(stream, validate_crcs=True).iter_messages():
                counts[channel.topic] = counts.get(channel.topic, 0) + 1
    for f in sorted(path.glob("*.db3")):
        conn = sqlite3.connect(f"{f.resolve().as_uri()}?mode=ro", uri=True)
        for topic, n in conn.execute("SELECT t.name, count(*) FROM messages m JOIN topics t "
                                     "ON m.topic_id = t.id GROUP BY t.name"):
            counts[topic] = n
        conn.close()
    return counts


def service_events(path: Path) -> list:
    with open_bag(path) as bag:
        return [(topic, m.info.event_type, m.info.sequence_number, len(m.request),
                 len(m.response)) for topic, _, m in bag.messages(
                     ["/test_service1/_service_event", "/test_service2/_service_event"])]


@pytest.mark.parametrize("name", ["mcap_service_events", "sqlite3_service_events"])
def test_service_event_bags_read_every_message(name):
    """rosbag2 stores a service event topic's definition as the .srv text (request --- response;
    in sqlite3 under the service's name), which rosbags cannot parse: the MCAP bag was refused
    as "truncated or corrupt". Every message the independent reader finds is read and decoded,
    the events as rosidl defines them (info, request[<=1], response[<=1])."""
    path = shared_bag(name)
    with open_bag(path) as bag:
        assert {t: i.count for t, i in bag.topics.items()} == {
            "/events/write_split": 0, "/test_service1/_service_event": 4,
            "/test_service2/_service_event": 4, "/test_topic1": 1, "/test_topic2": 1}
        readable = [t for t in bag.topics if t not in bag.undecodable]
        messages = list(bag.messages(readable))
        strings = [m for t, _, m in messages if t == "/test_topic1"]
        # The bag's rosbag2_interfaces/msg/WriteSplitEvent has two fields, Kilted's three: its
        # recorded type hash says so, and the topic is refused rather than misread.
        assert list(bag.undecodable) == ["/events/write_split"]
        assert "hashes to" in bag.undecodable["/events/write_split"]
        with pytest.raises(BagError, match="topic /events/write_split: the ROS 2 Kilted"):
            list(bag.messages(["/events/write_split"]))
    assert dict(Counter(t for t, _, _ in messages)) == independent_counts(path)
    assert strings[0].string_value_default1 == "Hello world!"
    events = service_events(path)
    # request sent (event 0: the request, no response), response received (3: the response)
    for topic in ("/test_service1/_service_event", "/test_service2/_service_event"):
        assert [e[1:] for e in events if e[0] == topic] == [(0, 1, 1, 0), (3, 1, 0, 1),
                                                           (0, 2, 1, 0), (3, 2, 0, 1)]


def test_service_events_are_the_same_in_both_storages():
    """The two recordings (separate runs of one test) hold the same events per service."""
    mcap, db3 = (sorted(service_events(shared_bag(n)), key=lambda e: e[0])
                 for n in ("mcap_service_events", "sqlite3_service_events"))
    assert mcap == db3 and len(mcap) == 8


def test_a_definition_that_cannot_be_parsed_spoils_only_its_topic(tmp_path):
    """A bag storing a broken definition of one type: the bag opens, the topic is listed with
    the reason, its messages cannot be read, every other topic reads."""
    path = tmp_path / "odd"
    with Writer(path, version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        chatter = writer.add_connection("/chatter", STRING, typestore=TYPES)
        odd = writer.add_connection("/odd", "odd_msgs/msg/Odd", msgdef="float64 x\n!!! y\n",
                                    rihs01="RIHS01_" + "0" * 64)
        for i in range(5):
            writer.write(chatter, i, TYPES.serialize_cdr(TYPES.types[STRING](data=f"m{i}"),
                                                         STRING))
            writer.write(odd, i, bytes(12))
    with open_bag(path) as bag:
        assert bag.topics["/odd"] == TopicInfo("odd_msgs/msg/Odd", 5)
        assert list(bag.undecodable) == ["/odd"]
        assert "odd_msgs/msg/Odd stored in the bag cannot be parsed" in bag.undecodable["/odd"]
        assert [m.data for _, _, m in bag.messages(["/chatter"])] == [f"m{i}" for i in range(5)]
        with pytest.raises(BagError, match="topic /odd: the definition of odd_msgs/msg/Odd"):
            list(bag.messages())


def test_empty_bag_is_refused():
    path = shared_bag("empty_bag")
    with pytest.raises(BagError, match="holds no messages") as err:
        open_bag(path)
    assert str(path) in str(err.value)


def test_bag_in_another_serialization_format_is_refused():
    path = shared_bag("sqlite3_wrong_rmw_test")
    with pytest.raises(BagError, match="not CDR") as err:
        open_bag(path)
    assert str(path) in str(err.value) and "/test_topic ('wrong_format')" in str(err.value)


def test_unknown_type_without_definition_is_refused_by_topic(tmp_path):
    """The same sqlite3 bag declared CDR: its test_msgs types have no stored definition."""
    path = tmp_path / "no_definitions"
    shutil.copytree(shared_bag("sqlite3_wrong_rmw_test"), path)
    path.chmod(0o755)
    meta = path / "metadata.yaml"
    meta.chmod(0o644)
    meta.write_text(meta.read_text().replace("wrong_format", "cdr"))
    with open_bag(path) as bag:
        assert bag.topics["/test_topic"] == TopicInfo("test_msgs/msg/BasicTypes", 3)
        with pytest.raises(BagError) as err:
            list(bag.messages(["/test_topic"]))
    assert str(path) in str(err.value) and "/test_topic" in str(err.value)
    assert "test_msgs/msg/BasicTypes is unknown" in str(err.value)


# ===================================================================== bags written here
def write_bag(path: Path, storage=StoragePlugin.MCAP, n: int = 200, serialization="cdr",
              compression=None) -> Path:
    """/chatter (std_msgs/String) and /values (Float64MultiArray), every 10 ms."""
    writer = Writer(path, version=9, storage_plugin=storage)
    if compression:
        writer.set_compression(compression, CompressionFormat.ZSTD)
    with writer:
        writer.set_custom_data("operator", "tester")
        chatter = writer.add_connection("/chatter", STRING, typestore=TYPES,
                                        serialization_format=serialization)
        values = writer.add_connection("/values", "std_msgs/msg/Float64MultiArray",
                                       typestore=TYPES)
        layout = TYPES.types["std_msgs/msg/MultiArrayLayout"](dim=[], data_offset=0)
        for i in range(n):
            t = 1_000_000_000 + i * 10_000_000
            writer.write(chatter, t, TYPES.serialize_cdr(TYPES.types[STRING](data=f"m{i}"), STRING))
            msg = TYPES.types["std_msgs/msg/Float64MultiArray"](layout=layout,
                                                                data=np.full(3, float(i)))
            writer.write(values, t + 1, TYPES.serialize_cdr(msg, msg.__msgtype__))
    return path


@pytest.mark.parametrize("storage", [StoragePlugin.MCAP, StoragePlugin.SQLITE3])
def test_written_bag_reads_back(tmp_path, storage):
    path = write_bag(tmp_path / "bag", storage)
    with open_bag(path) as bag:
        assert bag.topics == {"/chatter": TopicInfo(STRING, 200),
                              "/values": TopicInfo("std_msgs/msg/Float64MultiArray", 200)}
        assert bag.custom_data == {"operator": "tester"}
        assert bag.start_ns == 1_000_000_000 and bag.end_ns == 1_000_000_000 + 1_990_000_001
        values = [(t, m.data[0]) for _, t, m in bag.messages(["/values"])]
    assert values == [(1_000_000_001 + i * 10_000_000, float(i)) for i in range(200)]


def test_single_mcap_file_and_compressed_bags_read(tmp_path):
    path = write_bag(tmp_path / "plain")
    assert len(read_all(path / "plain.mcap")) == 400
    for mode in (CompressionMode.FILE, CompressionMode.MESSAGE):
        assert len(read_all(write_bag(tmp_path / mode.name, compression=mode))) == 400


def test_truncated_mcap_is_refused_naming_the_file(tmp_path):
    path = write_bag(tmp_path / "cut")
    mcap = path / "cut.mcap"
    mcap.write_bytes(mcap.read_bytes()[: mcap.stat().st_size // 2])
    for target in (path, mcap):
        with pytest.raises(BagError, match="truncated or corrupt") as err:
            open_bag(target)
        assert str(mcap) in str(err.value)


def test_mcap_damaged_inside_is_refused_when_read(tmp_path):
    """Zeroed bytes inside a chunk: the file opens, and the read notices the lost messages."""
    path = write_bag(tmp_path / "damaged", n=2000)
    mcap = path / "damaged.mcap"
    data = bytearray(mcap.read_bytes())
    data[len(data) // 2: len(data) // 2 + 512] = bytes(512)
    mcap.write_bytes(bytes(data))
    with pytest.raises(BagError, match="truncated or corrupt") as err:
        read_all(path)
    assert str(path) in str(err.value)


def test_garbage_sqlite3_file_is_refused_naming_the_file(tmp_path):
    path = write_bag(tmp_path / "garbage", StoragePlugin.SQLITE3)
    db3 = path / "garbage.db3"
    db3.write_bytes(np.random.default_rng(0).integers(0, 256, db3.stat().st_size,
                                                      dtype=np.uint8).tobytes())
    with pytest.raises(BagError, match="truncated or corrupt") as err:
        open_bag(path)
    assert str(db3) in str(err.value)


def test_non_cdr_bag_is_refused(tmp_path):
    path = write_bag(tmp_path / "ros1", serialization="ros1")
    with pytest.raises(BagError, match=r"/chatter \('ros1'\)") as err:
        open_bag(path)
    assert str(path) in str(err.value)


def test_paths_that_are_no_bags_are_refused(tmp_path):
    with pytest.raises(BagError, match="does not exist"):
        open_bag(tmp_path / "missing")
    (tmp_path / "notes.txt").write_text("not a bag")
    with pytest.raises(BagError, match="not a rosbag2 bag"):
        open_bag(tmp_path / "notes.txt")
    with pytest.raises(BagError, match="no metadata.yaml"):
        open_bag(tmp_path)
    path = write_bag(tmp_path / "lost_file")
    (path / "lost_file.mcap").unlink()
    with pytest.raises(BagError, match=r"missing: \['lost_file.mcap'\]"):
        open_bag(path)
    with open_bag(write_bag(tmp_path / "fine")) as bag:
        with pytest.raises(BagError, match="no topic /nothing"):
            list(bag.messages(["/nothing"]))


def test_empty_written_bag_is_refused(tmp_path):
    path = write_bag(tmp_path / "empty", n=0)
    with pytest.raises(BagError, match="holds no messages") as err:
        open_bag(path)
    assert str(path) in str(err.value)


@pytest.mark.parametrize("name,code,lines", [
    ("mcap_talker", 0, ["/rosout                  10 msgs", "/topic                   10 msgs"]),
    ("sqlite3_talker", 0, ["/rosout                  10 msgs",
                           "/topic                   10 msgs"]),
    ("mcap_wbag", 0, ["AAA", "804 msgs", "chunk CRCs: checked in 5 of 5 chunks"]),
    ("mcap_service_events", 0, ["/test_service1/_service_event         4 msgs",
                                "/test_topic2                          1 msgs",
                                "topic /events/write_split cannot be decoded",
                                "chunk CRCs: checked in 0 of 1 chunks"]),
    ("sqlite3_service_events", 0, ["/test_service2/_service_event         4 msgs",
                                   "sqlite3 bags carry no checksums"]),
    ("empty_bag", 1, ["UNREADABLE", "the bag holds no messages"]),
])
def test_info_command_on_rosbag2_bags(name, code, lines):
    """`robot-imitation info` on bags that `ros2 bag record` wrote: topics and counts, or why
    a bag cannot be read (then, after printing everything, exit 1)."""
    out = subprocess.run([sys.executable, "-m", "robot_imitation.cli", "info",
                          str(shared_bag(name))], capture_output=True, text=True, timeout=120)
    assert out.returncode == code, out.stdout + out.stderr
    for line in lines:
        assert line in out.stdout, out.stdout
    if code:
        assert "1 of 1 episodes cannot be read" in out.stderr


def test_a_message_type_of_any_installed_package_can_be_recorded(tmp_path, monkeypatch):
    """Types outside the built-in store come from the package's .msg files under
    AMENT_PREFIX_PATH (nested types too); the bag reads back with the independent reader."""
    from mcap_ros2.reader import read_ros2_messages

    from robot_imitation.recording.bagwriter import EpisodeBag, TypeRegistry

    prefix = tmp_path / "prefix"
    msg_dir = prefix / "share" / "gripper_msgs" / "msg"
    msg_dir.mkdir(parents=True)
    (msg_dir / "Finger.msg").write_text("string name\nfloat64 force\n")
    (msg_dir / "Grasp.msg").write_text(
        "std_msgs/Header header\nFinger[] fingers\nbool closed\n")
    monkeypatch.setenv("AMENT_PREFIX_PATH", str(prefix))
    registry = TypeRegistry()
    bag = EpisodeBag(tmp_path / "bag", {"/grasp": "gripper_msgs/msg/Grasp"}, registry)
    store = registry.store
    Grasp, Finger = store.types["gripper_msgs/msg/Grasp"], store.types["gripper_msgs/msg/Finger"]
    Header, Time = store.types["std_msgs/msg/Header"], store.types["builtin_interfaces/msg/Time"]
    for i in range(3):
        msg = Grasp(header=Header(stamp=Time(sec=i, nanosec=0), frame_id="hand"),
                    fingers=[Finger(name="left", force=float(i)), Finger(name="right", force=2.0)],
                    closed=bool(i % 2))
        bag.write("/grasp", i * 1_000_000_000, store.serialize_cdr(msg, "gripper_msgs/msg/Grasp"))
    bag.close()
    got = [m.ros_msg for m in read_ros2_messages(str(tmp_path / "bag" / "bag.mcap"))]
    assert [m.fingers[0].force for m in got] == [0.0, 1.0, 2.0]
    assert [m.closed for m in got] == [False, True, False]
    with pytest.raises(OSError, match="gripper_msgs/msg/Missing.msg not found"):
        registry.ensure("gripper_msgs/msg/Missing")


# ===================================================================== chunk checksums
def write_values_bag(path: Path, n: int = 3000, storage: str = "mcap", flush_every: int = 0):
    """An episode bag of /values (Float64MultiArray [i, i + 0.5, 1e6 + 0.25 + i]) written by the
    recorder's writer (``EpisodeBag``); ``flush_every``: close a chunk every that many messages."""
    from robot_imitation.recording.bagwriter import EpisodeBag, TypeRegistry

    bag = EpisodeBag(path, {"/values": "std_msgs/msg/Float64MultiArray"}, TypeRegistry(),
                     storage=storage)
    layout = TYPES.types["std_msgs/msg/MultiArrayLayout"](dim=[], data_offset=0)
    for i in range(n):
        msg = TYPES.types["std_msgs/msg/Float64MultiArray"](
            layout=layout, data=np.array([i, i + 0.5, 1e6 + 0.25 + i], np.float64))
        bag.write("/values", 1_000_000_000 + i * 1_000_000, TYPES.serialize_cdr(msg, msg.__msgtype__))
        if flush_every and (i + 1) % flush_every == 0:
            bag.flush_chunk(force=True)
    return bag


def _chunks(mcap_file: Path) -> list:
    """Every chunk record of ``mcap_file``, as the independent reader sees it."""
    from mcap.records import Chunk
    from mcap.stream_reader import StreamReader

    with open(mcap_file, "rb") as f:
        return [r for r in StreamReader(f, skip_magic=False, emit_chunks=True).records
                if isinstance(r, Chunk)]


def test_recorded_chunks_carry_real_crcs(tmp_path):
    """Every chunk the recorder writes (closed by size, by the once-a-second flush, and at the
    end) holds the CRC32 of its records: the independent reader validates them all."""
    from mcap.reader import make_reader

    bag = write_values_bag(tmp_path / "bag", n=3000, flush_every=700)
    bag.close()
    mcap = tmp_path / "bag" / "bag.mcap"
    chunks = _chunks(mcap)
    assert len(chunks) == 5 and all(c.uncompressed_crc != 0 for c in chunks)
    with open(mcap, "rb") as f:
        values = [m.data for _, _, m in make_reader(f, validate_crcs=True).iter_messages()]
    assert len(values) == 3000
    with open_bag(tmp_path / "bag") as reader:
        assert reader.checked_chunks == (5, 5)
        got = [m.data[2] for _, _, m in reader.messages()]
    assert got == [1e6 + 0.25 + i for i in range(3000)]


def flip_float(mcap_file: Path, value: float) -> int:
    """Flip the lowest bit of the one place ``value`` is stored (a float64 in a payload)."""
    import struct

    data = bytearray(mcap_file.read_bytes())
    packed = struct.pack("<d", value)
    at = data.find(packed)
    assert at > 0 and data.find(packed, at + 1) == -1
    data[at] ^= 1
    mcap_file.write_bytes(bytes(data))
    return at


def test_a_flipped_byte_in_a_payload_is_an_error_naming_bag_and_chunk(tmp_path):
    """A single flipped bit inside a float of a message: the same size, the same message count,
    a plausible value. Only the chunk's CRC tells; the bag must never yield the changed value."""
    bag = write_values_bag(tmp_path / "bag", n=3000, flush_every=700)
    bag.close()
    mcap = tmp_path / "bag" / "bag.mcap"
    flip_float(mcap, 1e6 + 0.25 + 1500)            # message 1500: in the third chunk (700 each)
    with open_bag(tmp_path / "bag") as reader:
        with pytest.raises(BagError) as err:
            list(reader.messages())
    text = str(err.value)
    assert str(mcap) in text and "chunk 3 of 5" in text and "CRC" in text, text


def test_chunks_without_crc_are_reported_unchecked(tmp_path):
    """Bags of other writers (and of this recorder before CRCs) may hold CRC 0: readable, and
    the reader says how many chunks it could not check."""
    path = write_bag(tmp_path / "plain", n=50)       # rosbags' own writer: CRC 0
    assert [c.uncompressed_crc for c in _chunks(path / "plain.mcap")] == [0]
    with open_bag(path) as reader:
        assert reader.checked_chunks == (0, 1)
        assert len(list(reader.messages())) == 100
