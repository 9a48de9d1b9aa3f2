"""The nuScenes metadata schema: the columns a row of a nuScenes run carries, the tables the join reads, its error."""
from __future__ import annotations

import pyarrow as pa

from ..errors import DataError

# The metadata columns every row of a nuScenes run carries (all nullable: images without a
# sample_data row keep nulls).
META_FIELDS: tuple[pa.Field, ...] = (
    pa.field("sample_data_token", pa.string()),
    pa.field("sample_token", pa.string()),
    pa.field("scene_token", pa.string()),
    pa.field("scene_name", pa.string()),
    pa.field("scene_description", pa.string()),
    pa.field("channel", pa.string()),
    pa.field("timestamp", pa.int64()),  # µs since the epoch, as in the tables
    pa.field("is_key_frame", pa.bool_()),
    pa.field("location", pa.string()),
    pa.field("logfile", pa.string()),
    pa.field("date_captured", pa.string()),  # YYYY-MM-DD, as in log.json
    pa.field("split", pa.string()),  # the table version the row came from: v1.0-mini, v1.0-trainval, v1.0-test
    pa.field("ego_x", pa.float64()),  # metres, global frame: ego_pose.translation[0] via sample_data.ego_pose_token
    pa.field("ego_y", pa.float64()),  # metres, global frame: ego_pose.translation[1]
    # m/s: planar distance from the ego pose of the previous frame of the same camera (sample_data.prev, so the same
    # scene) divided by the time between the two poses; null at a scene's first frame
    pa.field("ego_speed", pa.float64()),
)
META_NAMES: tuple[str, ...] = tuple(f.name for f in META_FIELDS)

# Tables the join reads; the others (sample_annotation, instance, …) are never parsed.
NEEDED_TABLES: tuple[str, ...] = ("sample_data", "sample", "scene", "log", "calibrated_sensor", "sensor", "ego_pose")


class TablesError(DataError, ValueError):
    """The tables are missing, incomplete or unreadable (a fault of the data, exit 1); the message names the file."""


class MissingTables(TablesError):
    """A tables folder or archive lacks some of the tables asked for (the message names them)."""

