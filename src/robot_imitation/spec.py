"""The observation/action specification: one declared object for the whole pipeline.

A spec (``config/specs/<name>.yaml``) says which topics a policy sees and commands, which fields
it takes from each (joints by name, in a declared order), at which control rate, and how the
data are normalized. The recorder records its topics, the dataset builder and the policy node
both turn messages into arrays with ``Spec.extract`` (the same function, so training and
deployment cannot disagree), and the checkpoint stores the spec with its fingerprint.

``extract`` works on messages from rclpy and from bag readers (``rosbags``) alike: both expose
the message fields as attributes.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field

import numpy as np

from .paths import config_file, read_yaml
from .settings import check_keys, closest, name_prefixes

POSE_FIELDS = ("x", "y", "z", "qw", "qx", "qy", "qz")
IMAGE_ENCODINGS = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1}


class SpecError(ValueError):
    """A spec that cannot be used, or a message that does not fit it."""


@dataclass(frozen=True)
class FieldSpec:
    """One array of the observation or the action, taken from one topic."""

    key: str
    topic: str
    type: str
    field: str
    joints: tuple = ()
    size: int = 0
    image: dict = field(default_factory=dict)
    relative_to: str = ""  # actions: the observation key whose leading values this is relative to

    @property
    def shape(self) -> tuple:
        if self.field == "image":
            return (self.image["height"], self.image["width"],
                    IMAGE_ENCODINGS[self.image["encoding"]])
        if self.joints:
            return (len(self.joints),)
        if self.field == "pose":
            return (7,)
        return (self.size,)

    @property
    def is_image(self) -> bool:
        return self.field == "image"

    def names(self) -> list:
        """A name per element (for plots and logs)."""
        if self.joints:
            return [f"{self.key}.{j}" for j in self.joints]
        if self.field == "pose":
            return [f"{self.key}.{c}" for c in POSE_FIELDS]
        if self.is_image:
            return [self.key]
        return [f"{self.key}[{i}]" for i in range(self.size)]


FEATURE_OPS = ("difference",)


@dataclass(frozen=True)
class FeatureSpec:
    """A policy input computed from observations, the same way at training and deployment.

    ``difference``: the leading ``size`` values of ``inputs[0]`` minus those of ``inputs[1]``
    (the object's position relative to the end effector, say). The computation is written once
    and runs on NumPy arrays (dataset statistics) and torch tensors (inside the policy, hence
    in every exported backend) alike.
    """

    key: str
    op: str
    inputs: tuple
    size: int

    topic = ""  # not taken from a topic
    is_image = False

    @property
    def shape(self) -> tuple:
        return (self.size,)

    def names(self) -> list:
        return [f"{self.key}[{i}]" for i in range(self.size)]

    def to_dict(self) -> dict:
        return {"key": self.key, "op": self.op, "inputs": list(self.inputs), "size": self.size}

    @classmethod
    def from_dict(cls, d: dict) -> "FeatureSpec":
        """From ``to_dict`` output (validated entries only: ``Spec.from_dict`` checks them)."""
        return cls(key=d["key"], op=d["op"], inputs=tuple(d["inputs"]), size=int(d["size"]))

    def compute(self, obs: dict):
        a, b = self.inputs
        return obs[a][..., : self.size] - obs[b][..., : self.size]


def derive(features, obs: dict) -> dict:
    """``obs`` with ``features`` (``FeatureSpec``) added, in order (NumPy arrays or torch
    tensors, batched or not): the one place features are computed, for the dataset statistics
    and inside the policy."""
    out = dict(obs)
    for f in features:
        out[f.key] = f.compute(out)
    return out


_SUPPORTED = {
    "sensor_msgs/msg/JointState": ("position", "velocity", "effort"),
    "geometry_msgs/msg/PoseStamped": ("pose",),
    "geometry_msgs/msg/Pose": ("pose",),
    "std_msgs/msg/Float64MultiArray": ("data",),
    "std_msgs/msg/Float32MultiArray": ("data",),
    "sensor_msgs/msg/Image": ("image",),
}


# The keys a spec may hold, at each level (Spec.to_dict writes no others). Any other key is an
# error: a misspelled one (`relative_too`, `normalisation`) would otherwise be ignored and train
# a different model without a word.
MIN_RATE, MAX_RATE = 0.01, 10_000.0  # a spec's control rate (Hz)
SPEC_KEYS = ("name", "control_rate", "observations", "actions", "features", "record_also",
             "normalization")
FIELD_KEYS = ("key", "topic", "type", "field", "joints", "size", "image", "relative_to")
IMAGE_KEYS = ("width", "height", "encoding")
FEATURE_KEYS = ("key", "op", "inputs", "size")
RECORD_ALSO_KEYS = ("topic", "type")
NORMALIZED = ("observations", "actions")
NORMALIZATION_METHODS = ("mean_std", "min_max")


def _check_keys(value, known, where: str, place: str) -> dict:
    """``value`` as a mapping holding only ``known`` keys (``settings.check_keys``)."""
    return check_keys(value, known, where, place, SpecError)


def _check_type(value, kind: str, where: str, place: str) -> None:
    """``value`` is a ``kind``: "text", "number", "count" (an int), or "texts" (a list of
    text); else a SpecError naming the place (a string where a list belongs would otherwise
    be taken letter by letter)."""
    ok = {"text": isinstance(value, str),
          "number": isinstance(value, (int, float)) and not isinstance(value, bool),
          "count": isinstance(value, int) and not isinstance(value, bool),
          "texts": isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value)
          }[kind]
    if not ok:
        wanted = {"text": "a string", "number": "a number", "count": "an integer",
                  "texts": "a list of strings"}[kind]
        raise SpecError(f"{where}: {place} must be {wanted}, got {value!r}")


ENTRY_TYPES = {"key": "text", "topic": "text", "type": "text", "field": "text",
               "joints": "texts", "size": "count", "relative_to": "text", "op": "text",
               "inputs": "texts", "width": "count", "height": "count", "encoding": "text"}


def _check_structure(data, where: str) -> None:
    """Every level of a spec mapping: mappings and lists where they belong, no unknown key,
    values of the right kind."""
    _check_keys(data, SPEC_KEYS, where, "the spec")
    if "name" in data:
        _check_type(data["name"], "text", where, "name")
    if "control_rate" in data:
        _check_type(data["control_rate"], "number", where, "control_rate")

    def entries(name: str) -> list:
        items = data.get(name) or []
        if not isinstance(items, list):
            raise SpecError(f"{where}: {name} must be a list of mappings, got "
                            f"{type(items).__name__}")
        return items

    for group, known in (("observations", FIELD_KEYS), ("actions", FIELD_KEYS),
                         ("features", FEATURE_KEYS), ("record_also", RECORD_ALSO_KEYS)):
        for i, entry in enumerate(entries(group)):
            named = (f" ({entry['key']})" if isinstance(entry, dict)
                     and isinstance(entry.get("key"), str) else "")
            place = f"{group}[{i}]{named}"
            _check_keys(entry, known, where, place)
            if group == "record_also":
                missing = [k for k in RECORD_ALSO_KEYS if k not in entry]
                if missing:
                    raise SpecError(f"{where}: {place}: missing {missing}")
            values = [(f"{place}.{key}", key, value) for key, value in entry.items()]
            if entry.get("image") is not None:
                image = _check_keys(entry["image"], IMAGE_KEYS, where, f"{place}.image")
                values += [(f"{place}.image.{key}", key, value) for key, value in image.items()]
            for at, key, value in values:
                if key in ENTRY_TYPES and value is not None:
                    _check_type(value, ENTRY_TYPES[key], where, at)
            if group == "observations" and entry.get("relative_to"):  # to_dict writes ""
                raise SpecError(f"{where}: {place}: relative_to is for actions (an action "
                                "predicted relative to an observation), not observations")
    norm = data.get("normalization")
    if norm is not None:
        _check_keys(norm, NORMALIZED, where, "normalization")
        for key, method in norm.items():
            if method not in NORMALIZATION_METHODS:
                raise SpecError(f"{where}: normalization.{key}: unknown method '{method}'"
                                f"{closest(method, NORMALIZATION_METHODS)}")


def _field_spec(entry: dict, where: str) -> FieldSpec:
    missing = [k for k in ("key", "topic", "type", "field") if k not in entry]
    if missing:
        raise SpecError(f"{where}: missing {missing}")
    mtype = entry["type"]
    if "/msg/" not in mtype and mtype.count("/") == 1:
        mtype = mtype.replace("/", "/msg/")
    fields = _SUPPORTED.get(mtype)
    if fields is None:
        raise SpecError(f"{where} ({entry['key']}): message type {mtype} is not supported "
                        f"(supported: {sorted(_SUPPORTED)})")
    if entry["field"] not in fields:
        raise SpecError(f"{where} ({entry['key']}): {mtype} has no field '{entry['field']}' "
                        f"usable here (use one of {list(fields)})")
    if not entry["topic"].startswith("/"):
        raise SpecError(f"{where} ({entry['key']}): topic {entry['topic']!r} must be absolute")
    joints = tuple(entry.get("joints") or ())
    if mtype == "sensor_msgs/msg/JointState" and not joints:
        raise SpecError(f"{where} ({entry['key']}): joint states are taken by joint name: "
                        "list `joints`")
    size = int(entry.get("size", 0))
    if entry["field"] == "data" and size <= 0:
        raise SpecError(f"{where} ({entry['key']}): give the array `size`")
    image = dict(entry.get("image") or {})
    if entry["field"] == "image":
        if not {"width", "height", "encoding"} <= set(image):
            raise SpecError(f"{where} ({entry['key']}): image needs width, height, encoding")
        if image["encoding"] not in ("rgb8", "mono8"):
            raise SpecError(f"{where} ({entry['key']}): images are stored as rgb8 or mono8")
    return FieldSpec(key=entry["key"], topic=entry["topic"], type=mtype, field=entry["field"],
                     joints=joints, size=size, image=image,
                     relative_to=entry.get("relative_to", ""))


def _feature_spec(entry: dict, where: str, known: dict) -> FeatureSpec:
    missing = [k for k in ("key", "op", "inputs") if k not in entry]
    if missing:
        raise SpecError(f"{where}: missing {missing}")
    key, op, inputs = entry["key"], entry["op"], tuple(entry["inputs"] or ())
    if op not in FEATURE_OPS:
        raise SpecError(f"{where} ({key}): unknown op {op!r} (known: {list(FEATURE_OPS)})")
    if len(inputs) != 2:
        raise SpecError(f"{where} ({key}): {op} takes two inputs, got {list(inputs)}")
    bad = [k for k in inputs if k not in known or known[k].is_image]
    if bad:
        raise SpecError(f"{where} ({key}): inputs {bad} are not low-dimensional observations "
                        f"declared before it")
    widest = min(known[k].shape[0] for k in inputs)
    size = int(entry.get("size", widest))
    if not 0 < size <= widest:
        raise SpecError(f"{where} ({key}): size {size} must be 1..{widest} (the inputs' "
                        f"leading values)")
    return FeatureSpec(key=key, op=op, inputs=inputs, size=size)


@dataclass(frozen=True)
class Spec:
    name: str
    control_rate: float
    observations: tuple
    actions: tuple
    record_also: tuple = ()
    normalization: dict = field(default_factory=lambda: {"observations": "mean_std",
                                                          "actions": "min_max"})
    features: tuple = ()  # FeatureSpec: policy inputs computed from the observations

    # ----------------------------------------------------------------- loading
    @classmethod
    def from_dict(cls, data: dict, where: str = "spec") -> "Spec":
        """A spec from its mapping (a spec file, ``to_dict`` output); ``SpecError`` naming the
        place for anything missing, unknown (the closest known key suggested) or invalid."""
        _check_structure(data, where)
        for key in ("name", "control_rate", "observations", "actions"):
            if key not in data:
                raise SpecError(f"{where}: missing '{key}'")
        obs = tuple(_field_spec(e, f"{where}: observations[{i}]")
                    for i, e in enumerate(data["observations"]))
        act = tuple(_field_spec(e, f"{where}: actions[{i}]") for i, e in enumerate(data["actions"]))
        for key, fields in (("observations", obs), ("actions", act)):
            if not fields:  # (an empty list: every build, training and export failed on it)
                raise SpecError(f"{where}: {key} must list at least one field")
        known = {f.key: f for f in obs}
        feats = []
        for i, e in enumerate(data.get("features") or ()):
            feats.append(_feature_spec(e, f"{where}: features[{i}]", known))
            known[feats[-1].key] = feats[-1]
        keys = [f.key for f in obs + act + tuple(feats)]
        if len(set(keys)) != len(keys):
            raise SpecError(f"{where}: keys must be unique, got {keys}")
        if any(f.is_image for f in act):
            raise SpecError(f"{where}: actions cannot be images")
        by_key = {f.key: f for f in obs}
        for f in act:
            if f.relative_to and (f.relative_to not in by_key or by_key[f.relative_to].is_image
                                  or by_key[f.relative_to].shape[0] < f.shape[0]):
                raise SpecError(f"{where}: action '{f.key}' is relative_to "
                                f"'{f.relative_to}', which must be a low-dimensional "
                                f"observation with at least {f.shape[0]} values")
        also = tuple((e["topic"], e["type"]) for e in data.get("record_also") or ())
        rate = float(data["control_rate"])  # (a number: _check_structure)
        if not MIN_RATE <= rate <= MAX_RATE:  # (NaN and inf too)
            raise SpecError(f"{where}: control_rate must be in [{MIN_RATE:g}, {MAX_RATE:g}] "
                            f"Hz, got {rate:g}")
        norm = dict(data.get("normalization") or {"observations": "mean_std",
                                                  "actions": "min_max"})
        return cls(name=data["name"], control_rate=rate, observations=obs, actions=act,
                   record_also=also, normalization=norm, features=tuple(feats))

    @classmethod
    def load(cls, name_or_path) -> "Spec":
        """A spec by name (``config/specs/<name>.yaml``) or by path."""
        try:
            path = config_file("specs", name_or_path)
        except FileNotFoundError as exc:
            raise SpecError(str(exc)) from None
        data = read_yaml(path, SpecError) or {}
        if not isinstance(data, dict):
            raise SpecError(f"{path}: a spec is a mapping of names to values, "
                            f"not a {type(data).__name__}")
        return cls.from_dict(data, where=str(path))

    @classmethod
    def for_task(cls, task) -> "Spec":
        """The spec of a task (``task_spec_name``)."""
        return cls.load(task_spec_name(task))

    def to_dict(self) -> dict:
        def entry(f: FieldSpec) -> dict:
            d = {k: v for k, v in asdict(f).items() if v not in ((), 0, {}, None)}
            if f.joints:
                d["joints"] = list(f.joints)
            return d

        out = {"name": self.name, "control_rate": self.control_rate,
               "observations": [entry(f) for f in self.observations],
               "actions": [entry(f) for f in self.actions],
               "record_also": [{"topic": t, "type": ty} for t, ty in self.record_also],
               "normalization": dict(self.normalization)}
        if self.features:  # absent when empty: specs without features keep their fingerprint
            out["features"] = [f.to_dict() for f in self.features]
        return out

    def fingerprint(self) -> str:
        """A hash of everything that changes what the arrays mean."""
        canon = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canon.encode()).hexdigest()[:16]

    # ----------------------------------------------------------------- layout
    @property
    def fields(self) -> tuple:
        return self.observations + self.actions

    def topics(self, include_extra: bool = True) -> dict:
        """{topic: message type} of everything to record."""
        out = {}
        for f in self.fields:
            if out.setdefault(f.topic, f.type) != f.type:
                raise SpecError(f"topic {f.topic} declared with two types: {out[f.topic]}, "
                                f"{f.type}")
        if include_extra:
            for topic, mtype in self.record_also:
                out.setdefault(topic, mtype if "/msg/" in mtype else mtype.replace("/", "/msg/"))
        return out

    def observation_topics(self) -> dict:
        return {f.topic: f.type for f in self.observations}

    def action_topics(self) -> dict:
        return {f.topic: f.type for f in self.actions}

    @property
    def low_dim_observations(self) -> tuple:
        return tuple(f for f in self.observations if not f.is_image)

    @property
    def image_observations(self) -> tuple:
        return tuple(f for f in self.observations if f.is_image)

    @property
    def policy_inputs(self) -> tuple:
        """What the policy's MLP sees, in order: low-dimensional observations, then features
        (each normalized with the training split's statistics)."""
        return self.low_dim_observations + self.features

    def derive(self, obs: dict) -> dict:
        """``obs`` with the declared features added (see ``derive``)."""
        return derive(self.features, obs)

    @property
    def action_dim(self) -> int:
        return sum(f.shape[0] for f in self.actions)

    @property
    def low_dim_obs_dim(self) -> int:
        return sum(f.shape[0] for f in self.low_dim_observations)

    # ----------------------------------------------------------------- extraction
    def extract(self, f: FieldSpec, msg) -> np.ndarray:
        """The array of field ``f`` from ``msg`` (rclpy or bag reader message)."""
        try:
            if f.field in ("position", "velocity", "effort"):
                return _joint_values(f, msg)
            if f.field == "pose":
                pose = msg.pose if hasattr(msg, "pose") else msg
                p, o = pose.position, pose.orientation
                return np.array([p.x, p.y, p.z, o.w, o.x, o.y, o.z], dtype=np.float64)
            if f.field == "data":
                v = np.asarray(msg.data, dtype=np.float64)
                if v.shape != (f.size,):
                    raise SpecError(f"{f.topic}: expected {f.size} values, got {v.size}")
                return v
            if f.field == "image":
                return decode_image(msg, f.image["width"], f.image["height"],
                                    f.image["encoding"])
        except SpecError:
            raise
        except (AttributeError, TypeError) as exc:
            raise SpecError(f"{f.topic}: message does not fit {f.type}.{f.field}: {exc}") from None
        raise SpecError(f"{f.topic}: unsupported field {f.field}")


def _joint_values(f: FieldSpec, msg) -> np.ndarray:
    names = list(msg.name)
    values = np.asarray(getattr(msg, f.field), dtype=np.float64)
    if len(values) != len(names):
        raise SpecError(f"{f.topic}: {len(names)} joint names but {len(values)} {f.field} values")
    try:
        idx = [names.index(j) for j in f.joints]
    except ValueError:
        missing = [j for j in f.joints if j not in names]
        raise SpecError(f"{f.topic}: joints {missing} missing from the message "
                        f"(it has {names})") from None
    return values[idx]


def message_stamp(msg) -> float | None:
    """The header stamp in seconds, or None for messages without a header."""
    header = getattr(msg, "header", None)
    if header is None:
        return None
    return header.stamp.sec + header.stamp.nanosec * 1e-9


def decode_image(msg, width: int, height: int, encoding: str) -> np.ndarray:
    """A ``sensor_msgs/Image`` as uint8 (height, width, channels) in ``encoding``.

    Resizing is nearest-neighbour (deterministic, and identical at training and deployment).
    """
    buf = np.frombuffer(memoryview(msg.data).cast("B") if not isinstance(msg.data, np.ndarray)
                        else msg.data, dtype=np.uint8)
    img = image_pixels(buf, int(msg.height), int(msg.width), int(msg.step), msg.encoding)
    return resize_nearest(img, width, height, encoding)


def image_pixels(buf: np.ndarray, h: int, w: int, step: int, src_enc: str) -> np.ndarray:
    """The (h, w, channels) RGB or mono pixels of an image's bytes (rows ``step`` bytes apart,
    in ``src_enc``): BGR turned to RGB, alpha dropped."""
    if src_enc not in IMAGE_ENCODINGS:
        raise SpecError(f"image encoding {src_enc!r} not supported "
                        f"(supported: {sorted(IMAGE_ENCODINGS)})")
    ch = IMAGE_ENCODINGS[src_enc]
    if step < w * ch or buf.size < step * h:
        raise SpecError(f"image of {w}x{h} {src_enc} needs {step * h} bytes with step {step}, "
                        f"got {buf.size}")
    img = buf[: step * h].reshape(h, step)[:, : w * ch].reshape(h, w, ch)
    if src_enc in ("bgr8", "bgra8"):
        img = img[..., [2, 1, 0]]
    elif src_enc == "rgba8":
        img = img[..., :3]
    return img


def resize_nearest(img: np.ndarray, width: int, height: int, encoding: str) -> np.ndarray:
    """An RGB or mono uint8 image (H, W, C) converted to ``encoding`` and resized
    (nearest neighbour) to (height, width): the one image path of training and deployment."""
    if img.ndim == 2:
        img = img[..., None]
    if encoding == "mono8" and img.shape[2] == 3:
        img = (img @ np.array([0.299, 0.587, 0.114])).astype(np.uint8)[..., None]
    elif encoding == "rgb8" and img.shape[2] == 1:
        img = np.repeat(img, 3, axis=2)
    h, w = img.shape[:2]
    if (h, w) != (height, width):
        # row i of the result is row i*h//height (column j, j*w//width); two takes, one per
        # axis: 37 us for 320x240 rgb8 to 96x96, where indexing with the rows and then the
        # columns took 116 (its column gather left a strided result, copied again)
        img = np.take(np.take(img, np.arange(height) * h // height, axis=0),
                      np.arange(width) * w // width, axis=1)
    return np.ascontiguousarray(img)


def task_spec_name(task) -> str:
    """The name of a task's spec (a ``config/specs`` name), for a ``config/tasks`` name or a
    task file's path: the spec named after the task's ``name``, else after the longest part of
    it before an ``_`` that names one (a task ``reach_fast`` runs reach's logic and is observed
    as reach; ``push_obstacle_x`` as push_obstacle, not push).
    A task file is never read as a spec (its keys are not a spec's). ``SpecError`` when there
    is none."""
    try:
        data = read_yaml(config_file("tasks", task), SpecError)
    except FileNotFoundError as exc:
        raise SpecError(str(exc)) from None
    name = data.get("name") if isinstance(data, dict) else None
    if not isinstance(name, str) or not name:
        raise SpecError(f"task {task}: it names no task (`name:`), so it has no spec of its own; "
                        "give one (--spec, or the `spec` parameter)")
    for candidate in name_prefixes(name):
        try:
            config_file("specs", candidate)
        except FileNotFoundError:
            continue
        return candidate
    raise SpecError(f"task {task} ({name}): no spec named after it (config/specs/{name}.yaml); "
                    "give one (--spec, or the `spec` parameter)")
