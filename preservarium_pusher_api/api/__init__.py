"""The HTTP layer: routes, dependencies, middleware and the one error-to-HTTP mapping.

Routes translate HTTP to the services below and back; they hold no rules of their own.
"""
