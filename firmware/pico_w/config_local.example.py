# Copy to config_local.py (not tracked) and fill in the site's values.
config = {
    "device_id": "pico-w-lab-001",
    "server": "192.168.1.10",
    "ssid": "lab-wifi",
    "wifi_pw": "change-me",
    # "user": "pico-w-lab-001",
    # "password": "change-me",
}
