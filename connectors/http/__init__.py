"""HTTP connector: commands as ``POST {base_url}/execute/{command_type}``."""
