"""Errors a user can act on. The CLI prints them as one line and exits non-zero."""


class JRTError(Exception):
    """Bad input or an unsupported model/config: the message says what is wrong and what to do."""


class UnsupportedModelError(JRTError, TypeError):
    """``wrap``/``load`` got a model or checkpoint of a kind no adapter handles."""


class CheckpointError(JRTError, ValueError):
    """A folder is not a checkpoint, or a checkpoint's config/weights are not what its format requires."""


class PromptTooLongError(JRTError, ValueError):
    """The prompt exceeds the model's token budget and trimming was not allowed."""
