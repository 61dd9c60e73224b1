"""`Part`, the base of every inner-loop part: serialisable through its constructor's arguments."""


class Part:
    """An inner-loop part. `get_config` returns its constructor's arguments; `from_config` rebuilds it.

    Subclasses with arguments override `get_config`; register them with
    `keras.saving.register_keras_serializable` so that saved models restore them.
    """

    def get_config(self):
        return {}

    @classmethod
    def from_config(cls, config):
        return cls(**config)
