"""LLaVA-Mini: a query compressor plus modality pre-fusion layers (``layers``), the official prompt
(``prompt``), the question-independent prompt head (``head``), and the method with its checkpoint loader
(``method``)."""

from vidqa.methods.mini.head import *  # noqa: F401,F403
from vidqa.methods.mini.layers import *  # noqa: F401,F403
from vidqa.methods.mini.method import *  # noqa: F401,F403
from vidqa.methods.mini.prompt import *  # noqa: F401,F403
