"""Reading rosbag2 bags: rosbag2's own test bags, bags written here, and damaged ones."""
from __future__ import annotations

import shutil
import subprocess
import sys
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


@pytest.mark.parametrize("name,lines", [
    ("mcap_talker", ["/rosout                  10 msgs", "/topic                   10 msgs"]),
    ("sqlite3_talker", ["/rosout                  10 msgs", "/topic                   10 msgs"]),
    ("mcap_wbag", ["AAA", "804 msgs"]),
    ("empty_bag", ["the bag holds no messages"]),
])
def test_info_command_on_rosbag2_bags(name, lines):
    """`robot-imitation info` on bags that `ros2 bag record` wrote: topics and counts, or why
    a bag cannot be read."""
    out = subprocess.run([sys.executable, "-m", "robot_imitation.cli", "info",
                          str(shared_bag(name))], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    for line in lines:
        assert line in out.stdout, out.stdout


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
