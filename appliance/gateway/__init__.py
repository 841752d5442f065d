"""The HTTP layer: the app factory, one router per resource, errors mapped in one place."""
