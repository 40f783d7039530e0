"""CoAP connector: commands as ``POST coap://{host}:{port}/{path}`` to sensors."""
