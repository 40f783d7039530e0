"""Version 1 of the API; ``api/router.py`` mounts these modules under ``/api/v1``."""
