# my_plugin/__init__.py
"""my_plugin: a method (gain), a backbone family (toy) and a dataset (tiny_pets) for vlprompt."""


def register() -> None:
    """The ``vlprompt.plugins`` entry point: importing the modules registers their extensions."""
    import my_plugin.gain  # noqa: F401
    import my_plugin.tiny_pets  # noqa: F401
    import my_plugin.toy_family  # noqa: F401
