"""Process supervision: a pure state machine per engine, an async driver, and the OS launcher."""
