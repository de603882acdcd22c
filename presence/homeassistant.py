"""Home Assistant MQTT discovery: per service, a connectivity sensor and a restart button.

Both read the monitor's own topics, so Home Assistant adds no second source of truth: the
sensor's state is the verdict (`online`/`suspect` -> on), its availability is the monitor's
status (a dead monitor shows "unavailable", not "everything is down"), and the button presses
arrive on `P/_monitor/ha/<name>/restart`, where the monitor turns them into its restart command.
"""

from __future__ import annotations

from typing import Any, Final

from presence.protocol import MONITOR, Topics, encode

__all__ = [
    "BINARY_SENSOR_KEYS",
    "BUTTON_KEYS",
    "button_topic",
    "discovery",
    "removal",
]

#: Keys Home Assistant documents for MQTT binary sensors / buttons that we use.
BINARY_SENSOR_KEYS: Final = frozenset(
    {
        "name",
        "unique_id",
        "object_id",
        "device_class",
        "state_topic",
        "value_template",
        "payload_on",
        "payload_off",
        "availability_topic",
        "availability_template",
        "payload_available",
        "payload_not_available",
        "json_attributes_topic",
        "device",
        "origin",
        "qos",
        "icon",
        "entity_category",
        "enabled_by_default",
        "expire_after",
        "force_update",
        "off_delay",
        "encoding",
        "json_attributes_template",
        "availability",
        "availability_mode",
    }
)
BUTTON_KEYS: Final = frozenset(
    {
        "name",
        "unique_id",
        "object_id",
        "device_class",
        "command_topic",
        "command_template",
        "payload_press",
        "availability_topic",
        "availability_template",
        "payload_available",
        "payload_not_available",
        "device",
        "origin",
        "qos",
        "retain",
        "icon",
        "entity_category",
        "enabled_by_default",
        "encoding",
        "json_attributes_topic",
        "json_attributes_template",
        "availability",
        "availability_mode",
    }
)
_PRESS: Final = "PRESS"


def button_topic(topics: Topics, name: str) -> str:
    """Where Home Assistant's restart button for `name` publishes its press."""
    return f"{topics.prefix}/{MONITOR}/ha/{name}/restart"


def _node(topics: Topics) -> str:
    # Two presence deployments (two prefixes) on one broker must not share entity ids.
    return "presence_" + "".join(c if c.isalnum() else "_" for c in topics.prefix)


def _config_topics(topics: Topics, discovery_prefix: str, name: str) -> tuple[str, str]:
    node = _node(topics)
    object_id = "".join(c if c.isalnum() or c in "_-" else "_" for c in name)
    return (
        f"{discovery_prefix}/binary_sensor/{node}/{object_id}/config",
        f"{discovery_prefix}/button/{node}/{object_id}_restart/config",
    )


def discovery(
    topics: Topics, discovery_prefix: str, name: str, version: str
) -> list[tuple[str, bytes]]:
    """The retained discovery configs for one service: (topic, payload) pairs."""
    node = _node(topics)
    availability: dict[str, Any] = {
        "availability_topic": topics.monitor_status,
        "availability_template": "{{ 'online' if value_json.state == 'online' else 'offline' }}",
        "payload_available": "online",
        "payload_not_available": "offline",
    }
    device = {
        "identifiers": [f"{node}_{name}"],
        "name": name,
        "manufacturer": "presence",
        "model": "service watched over MQTT",
        "sw_version": version,
    }
    origin = {"name": "presence", "sw_version": version}
    verdict = topics.verdict(name)
    sensor = {
        "name": "Connectivity",
        "unique_id": f"{node}_{name}_connectivity",
        "device_class": "connectivity",
        "state_topic": verdict,
        "value_template": ("{{ 'ON' if value_json.state in ['online', 'suspect'] else 'OFF' }}"),
        "payload_on": "ON",
        "payload_off": "OFF",
        "json_attributes_topic": verdict,
        "device": device,
        "origin": origin,
        "qos": 1,
        **availability,
    }
    button = {
        "name": "Restart",
        "unique_id": f"{node}_{name}_restart",
        "device_class": "restart",
        "command_topic": button_topic(topics, name),
        "payload_press": _PRESS,
        "device": device,
        "origin": origin,
        "qos": 1,
        "retain": False,
        **availability,
    }
    sensor_topic, button_config = _config_topics(topics, discovery_prefix, name)
    return [(sensor_topic, encode(sensor)), (button_config, encode(button))]


def removal(topics: Topics, discovery_prefix: str, name: str) -> list[tuple[str, bytes]]:
    """Empty retained configs: Home Assistant removes the service's entities."""
    return [(topic, b"") for topic in _config_topics(topics, discovery_prefix, name)]
