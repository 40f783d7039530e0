# Configuration of the Pico W firmware: defaults here, site values in config_local.py.
# config_local.py is not tracked: copy config_local.example.py and fill it in.

config = {
    "device_id": "pico-w-lab-001",
    "topic_prefix": "lab",
    "server": "192.168.1.10",
    "port": 1883,
    "user": None,
    "password": None,
    "ssl": False,
    "ssid": None,
    "wifi_pw": None,
    "keepalive": 60,
    # how many answers the board remembers so a repeated request_id is not run again
    "recent_requests": 32,
}

try:
    from config_local import config as _local

    config.update(_local)
except ImportError:
    pass
